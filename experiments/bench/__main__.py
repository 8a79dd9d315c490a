"""`python -m experiments.bench`: the step-time benchmark (`experiments.bench.step`)."""
from experiments.bench.step import main

if __name__ == '__main__':
  main()
