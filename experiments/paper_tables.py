"""Numbers from the paper's tables, keyed as our result rows are, for side-by-side
summaries. Only what we have of them; a cell we do not have is absent."""

# Lee et al., Table 9 (MEMO with freezing, CIFAR-10-C severity 5, ResNet-26): the gain in
# accuracy points over no adaptation. Our copy of the paper has no tables; these are the
# cells issue 16 quotes from it. The other settings and corruptions are not known here.
MEMO_CIFAR10C_TABLE9_GAINS = {
    'online/first_layer': {'gaussian_noise': 16.5, 'shot_noise': 15.9,
                           'impulse_noise': 9.5, 'defocus_blur': 6.3},
    'online/all': {'gaussian_noise': -0.1, 'shot_noise': 0.7,
                   'impulse_noise': -0.2, 'defocus_blur': 4.0},
    'episodic/all': {'gaussian_noise': 4.7, 'shot_noise': 4.7,
                     'impulse_noise': 6.7, 'defocus_blur': 0.4},
}

TABLES = {
    'memo_cifar10c_table9': dict(
        title="the paper's Table 9 (MEMO, CIFAR-10-C severity 5; the cells issue 16 quotes)",
        gains=MEMO_CIFAR10C_TABLE9_GAINS),
}
