"""ImageNet pretraining, the paper's default recipe: ResNet-50 1x, B=4096, 100 epochs, tau 0.1,
LARS 0.3 x B/256 (= 0.075 x sqrt(B) = 4.8), wd 1e-6, 10 warmup epochs, 2-layer head, s=1.0, blur.

ImageNet cannot be downloaded automatically: put ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar in $DATA/downloads/manual/, then `tfds build imagenet2012 --data_dir=$DATA`.
Built on by the platform configs (tpu_v3_32.py, tpu_v3_128.py, gpu_8x.py) and the ImageNet
evaluation configs (imagenet_linear_eval.py, imagenet_finetune_1pct.py and through it
imagenet_finetune_10pct.py).

Expected (paper, Table 6 / Fig. 9): 64.5% linear-eval top-1 after 100 epochs; 69.3% after 1000.

Evaluation costs at most about 3.3% of the run (simclr_jax.plan.eval_plan.eval_cost; a test checks
these figures). Pretraining: 31,279 steps x 4,096 = 128.1M images. The kNN monitor runs every 10
epochs and at the end, 11 times, each over a bank of 100,000 train images (the first 100 of each
class) and the 50,000 validation images: 1.65M images. At the end the linear probe extracts the
1.28M train images once more, and choosing the bank reads the train split's labels once (1.28M
records, no image decoding). So 2.93M eval images: 0.38% of the run if the TPUs set the pace (an
eval image is 1 forward pass, a training image about 6: 2 views x forward + backward), and
(2.93M + 1.28M) / 128.1M = 3.3% if input decoding does. The whole train split as bank every 5
epochs (the default for small sets) would cost 3.6% / 22%. Per-device memory of evaluation (the
plan, `python -m simclr_jax.plan`): see configs/tpu_v3_128.py.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.name = 'imagenet_r50'
  config.data.dataset = 'imagenet2012'
  config.data.eval_split = 'validation'
  config.data.image_size = 224
  config.data.cache = False
  config.aug.crop_area_min = 0.08
  config.aug.flip = True
  config.aug.color_jitter_strength = 1.0
  config.aug.use_blur = True
  config.model.resnet_depth = 50
  config.model.width_multiplier = 1.0
  config.model.num_proj_layers = 2  # v1 paper.
  config.model.dtype = 'bfloat16'
  config.loss.temperature = 0.1
  config.optim.learning_rate = 0.3
  config.optim.learning_rate_scaling = 'linear'
  config.optim.warmup_epochs = 10.0
  config.optim.weight_decay = 1e-6
  config.train.batch_size = 4096
  config.train.epochs = 100
  config.train.checkpoint_every_steps = 2500
  config.train.log_every_seconds = 60.0
  config.eval.batch_size = 4096
  config.eval.baselines = False
  config.train.eval_every_epochs = 10.0  # Evaluation cost: see the docstring.
  config.eval.knn_bank_size = 100_000  # 100 images of each class.
  config.eval.probe_batch_size = 4096
  config.eval.probe_steps = 3130  # 10 epochs of the 1.28M train features at 4096.
  return config
