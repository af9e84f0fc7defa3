"""SimCLRv2 stage 3 on ImageNet with a teacher fine-tuned on the 10% labels
(configs/imagenet_finetune_10pct.py): as configs/imagenet_distill_1pct.py, whose docstring gives
the settings and the commands (`:big_to_small` for a ResNet-50 1x student), with
--config.distill.teacher_checkpoint=$FT10.

Expected top-1 (from the issue that asked for this job, quoting the paper's abstract and the
official README): ResNet-50 distilled from ResNet-152 3x+SK 77.5%, against 68.4% for ResNet-50
fine-tuned alone on the 10%. Other rows: the paper's Table 3. Not reproduced by us.
"""

from configs import imagenet_distill_1pct


def get_config(variant: str = 'self'):
  config = imagenet_distill_1pct.get_config(variant)
  config.name = f'imagenet_distill_10pct_{variant}'
  return config
