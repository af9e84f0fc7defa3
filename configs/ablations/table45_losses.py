"""Tables 4 and 5: contrastive losses, then NT-Xent's l2 normalisation and temperature.

Table 4 (linear top-1 per loss): NT-Xent (tau 0.5, this repo's CIFAR-scale default), NT-Logistic
(tau 0.2) and margin triplet (margin 0.4), the last two with and without semi-hard negative
mining. The paper tunes each loss separately (appendix B.10: margin in {0, 0.4, 0.8, 1.6}, and
the temperature of NT-Logistic) without printing the chosen values in Table 4; tau 0.2 and
margin 0.4 are our picks inside those grids, not reported numbers.
Table 5 (NT-Xent): hidden_norm (l2 normalisation of z) True with tau 0.05, 0.1, 0.5, 1; False
with tau 10, 100 (the paper's exact columns).

    python -m simclr_jax.sweep --config=configs/ablations/table45_losses.py \
        --workdir=/tmp/ablations/table45
"""

from configs.ablations import base


def get_config():
  config = base.get_config()
  config.name = 'table45_losses'
  return config


def get_sweep():
  runs = [('t4_nt_xent', {'loss.type': 'nt_xent'}),
          ('t4_nt_logistic', {'loss.type': 'nt_logistic', 'loss.temperature': 0.2}),
          ('t4_nt_logistic_sh', {'loss.type': 'nt_logistic', 'loss.temperature': 0.2,
                                 'loss.semi_hard': True}),
          ('t4_margin_triplet', {'loss.type': 'margin_triplet', 'loss.margin': 0.4}),
          ('t4_margin_triplet_sh', {'loss.type': 'margin_triplet', 'loss.margin': 0.4,
                                    'loss.semi_hard': True})]
  for norm, taus in ((True, (0.05, 0.1, 0.5, 1.0)), (False, (10.0, 100.0))):
    for tau in taus:
      runs.append((f't5_norm={norm}_tau={tau:g}', {'loss.type': 'nt_xent',
                                                  'loss.hidden_norm': norm,
                                                  'loss.temperature': tau}))
  return runs


FIGURE = {'kind': 'table', 'columns': ['loss.type', 'loss.semi_hard', 'loss.margin',
                                       'loss.hidden_norm', 'loss.temperature']}
