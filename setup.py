from setuptools import find_packages, setup

setup(
    name="mdn-fairseq",
    version="0.1.0",
    description="Mini-Decoder Network (Lin et al. 2021, 'Bag of Tricks for Optimizing Transformer "
    "Efficiency') as a fairseq --user-dir plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.8",
    packages=find_packages(include=["mdn_fairseq", "mdn_fairseq.*"]),
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
    ],
    extras_require={"test": ["pytest"]},
    entry_points={
        "console_scripts": [
            "mdn-init=mdn_fairseq.init_student:main",
            "mdn-seqkd=mdn_fairseq.sequence_kd:main",
            "mdn-bench=mdn_fairseq.benchmark:main",
            "mdn-prepare=mdn_fairseq.prepare:main",
            "mdn-average=mdn_fairseq.average:main",
            "mdn-report=mdn_fairseq.report:main",
        ]
    },
    classifiers=[
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
