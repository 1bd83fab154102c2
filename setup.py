"""Install cxr_jax: `pip install -e '.[test]'`."""

import setuptools

INSTALL_REQUIRES = [
    # Minimum versions are the ones the test suite ran with (2026-11).
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "tensorflow-cpu>=2.21",
    "tensorflow-datasets>=4.9.10",
    "numpy>=2.0",
    "ml-collections>=1.1.0",
    "chex>=0.1.92",
    "pillow>=11.0",
    "pydicom>=3.0",  # RSNA and other DICOM sets (JPEG baseline through pillow).
    "scipy>=1.13",
    "scikit-learn>=1.6",
    "matplotlib>=3.9",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    "psutil>=6.0",
]

# torch and transformers serve the tests only (reference models for weight import and tokenization).
# torch is pinned: a CPU build of exactly this version is on the CI machines, and an unpinned torch pulls
# several GB of CUDA packages.
EXTRAS_REQUIRE = {
    "test": ["pytest>=8.0", "ruff>=0.8", "torch==2.13.0", "transformers>=4.40", "safetensors>=0.4"],
}

setuptools.setup(
    name="cxr_jax",
    version="0.1.0",
    description="JAX/Flax training system for chest X-ray DGM, ConVIRT and LD.",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["cxr_jax", "cxr_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["cxr-jax = cxr_jax.cli.main:entry_point"]},
)
