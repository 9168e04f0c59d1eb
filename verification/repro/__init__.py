"""The training reproduction (issue 5): data readers, transforms, sampler, models, metrics, training loop.

Modules, in pipeline order:

* ``config``      the run's settings: per-dataset defaults, named variants, flags
* ``data``        CUB-200-2011 folder reader and its checks; the Omniglot open-set split; image sets
* ``transforms``  the official input pipeline written with PIL + NumPy (no torchvision)
* ``sampler``     the official class-balanced batch sampler (16 classes x 5 images)
* ``bninception`` BN-Inception in the key layout of the converted Caffe weights, and its loader
* ``models``      small CNN, EfficientNet-Lite0 wrapper, pooling + 512-d head + L2 norm
* ``loss_bridge`` the loss as computed by gpwref, as a torch autograd function, and its cross-check
* ``metrics``     Recall@K and MAP@R with the query removed by index and a stated tie rule
* ``train``       one training run (evaluation, checkpoints, resume, model files, results JSON, plot)
* ``fixtures``    generated CUB_200_2011 and Omniglot folders in the data sets' layouts (tests, dry runs)
* ``readme_tables`` the README's reproduction figures, generated from ``verification/results/``

``verification/reproduce_cub200.py`` is the command line (``gpwref reproduce``).
"""
