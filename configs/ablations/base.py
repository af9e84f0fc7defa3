"""The base config every ablation study (configs/ablations/*.py) starts from: a 2-core CPU run of
about 40 s (compilation included) on the generated colour set 'embedded_shapes'.

Colour matters in these studies, so the data set is the colour shapes (data/shapes.py), not the
grey MNIST digits. Everything else is configs/default.py's tiny ResNet-10 x0.25, trained for a
short fixed number of steps, evaluated once at the end by the linear probe and kNN on frozen
features (no baselines, no embedding plot: a sweep compares runs with each other).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.name = 'ablation'
  config.data.dataset = 'embedded_shapes'
  config.data.image_size = 24
  config.aug.flip = True  # Shapes are flip-invariant classes (paper: on).
  config.train.batch_size = 256
  config.train.steps = 60
  config.train.eval_every_epochs = 0.0  # Evaluate at the end only.
  config.train.checkpoint_every_steps = 30
  config.train.log_every_seconds = 10.0
  config.eval.baselines = False
  config.eval.embedding_plot_points = 0
  config.eval.probe_steps = 300
  return config
