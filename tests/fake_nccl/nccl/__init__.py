"""A stand-in for nccl4py (tests/fake_nccl/nccl/core.py), put on PYTHONPATH by tests/test_distributed.py."""
