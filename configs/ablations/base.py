"""The base config every ablation study (configs/ablations/*.py) starts from: a 2-core CPU run of
about 2 minutes (compilation and evaluation included) on the generated colour set
'embedded_shapes'.

Colour matters in these studies, so the data set is the colour shapes (data/shapes.py), not the
grey MNIST digits. Everything else is configs/default.py's tiny ResNet-10 x0.25, trained for a
short fixed number of steps, evaluated once at the end by the linear probe and kNN on frozen
features (no baselines, no embedding plot: a sweep compares runs with each other).

Chosen by four 200-step runs on 2 cores (docs/ablations.md): 16 px (cost), colour strength 1.0
(0.242 linear top-1 vs 0.199 at 0.5), crop area >= 0.5 and tau 0.2 (0.302 with both; crops of
20% of a 32 px image often miss most of the shape). The paper's values (0.08, tau 0.1-0.5) are
for ImageNet/CIFAR-sized runs, not for 150 steps.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.name = 'ablation'
  config.data.dataset = 'embedded_shapes'
  config.data.image_size = 16
  config.aug.color_jitter_strength = 1.0
  config.aug.crop_area_min = 0.5
  config.loss.temperature = 0.2
  config.aug.flip = True  # Shapes are flip-invariant classes (paper: on).
  config.train.batch_size = 256
  config.train.steps = 150
  config.train.eval_every_epochs = 0.0  # Evaluate at the end only.
  config.train.checkpoint_every_steps = 50
  config.train.log_every_seconds = 10.0
  config.eval.baselines = False
  config.eval.embedding_plot_points = 0
  config.eval.probe_steps = 300
  return config
