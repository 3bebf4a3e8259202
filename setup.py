from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="mdn-fairseq",
    version="0.2.0",
    description="Mini-Decoder Network (Lin et al. 2021, 'Bag of Tricks for Optimizing Transformer "
    "Efficiency') as a fairseq --user-dir plugin",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.8",
    packages=find_packages(include=["mdn_fairseq", "mdn_fairseq.*"]),
    package_data={"mdn_fairseq": ["configs/*.sh", "configs/*.sha256"]},  # the shipped task configs (--task)
    install_requires=[
        # fairseq 0.12.2 does not import on Python >= 3.11; fairseq-fixed is the same `fairseq` module
        # (fairseq main + Python 3.11 fixes).
        "fairseq==0.12.2; python_version < '3.11'",
        "fairseq-fixed==0.12.3.1; python_version >= '3.11'",
        "torch>=1.13",
        "numpy",
        "sacrebleu>=2.0",
        "subword-nmt",
        "sacremoses",
        "matplotlib",  # mdn-bench --sweep plots
        "jieba",  # Chinese segmentation (mdn-prepare, nist12_zh_en)
        "tensorboardX",  # fairseq-train --tensorboard-logdir
    ],
    extras_require={"test": ["pytest", "ruff==0.17.6"], "bench": ["ctranslate2", "matplotlib"]},  # plots
    entry_points={
        "console_scripts": [
            "mdn-prepare=mdn_fairseq.cli.prepare:main",
            "mdn-init=mdn_fairseq.cli.init:main",
            "mdn-seqkd=mdn_fairseq.cli.seqkd:main",
            "mdn-average=mdn_fairseq.cli.average:main",
            "mdn-report=mdn_fairseq.cli.report:main",
            "mdn-bench=mdn_fairseq.cli.bench:main",
            "mdn-export=mdn_fairseq.cli.export:main",
            "mdn-san-blocks=mdn_fairseq.cli.san_blocks:main",
        ]
    },
    classifiers=[
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
