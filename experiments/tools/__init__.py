"""Tools beside the runners, each `python -m experiments.tools.<name>`:

  evaluate              a checkpoint's accuracy on a dataset's shifts
  merge_results         merge workdirs of one config (e.g. from several machines)
  memo_compare          MEMO workdirs side by side, gains with paired standard errors
  memo_tuning_baseline  MEMO's untuned settings on the tuning streams
  migrate_fingerprints  move committed results from path- to content-based fingerprints
  cifar10_jpeg_twin     the JPEG copies of the exact CIFAR-10 test images, as a tree
  tiny_imagenet         a CPU-sized trial of the ImageNet pipeline on Tiny-ImageNet
"""
