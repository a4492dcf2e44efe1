"""nbcnn.checkpoint: the file format (header, SHA-256 checked on load), version-1 files,
readable errors, atomic copies and the clean-up of a killed write's temporaries."""

import hashlib
import os
import pickle

import numpy as np
import pytest

import nbcnn
from nbcnn import checkpoint
from nbcnn.checkpoint import (CheckpointError, atomic_write, checkpoint_digest, copy_checkpoint,
                              load_checkpoint, read_checkpoint, remove_stale_temporaries,
                              save_checkpoint)

# A weight no other bytes of the file look like, to find the array data in the file.
MARKER = np.arange(1, 13, dtype=np.float32).reshape(3, 4) * np.float32(1.0 / 7)


def tiny_net():
    nbcnn.manual_seed(0)
    net = nbcnn.Sequential(nbcnn.Linear(4, 3))
    net.load_state_dict({"0.weight": MARKER, "0.bias": np.zeros(3, np.float32)})
    return net, nbcnn.SGD(net.parameters(), lr=0.1, momentum=0.9)


@pytest.fixture
def saved(tmp_path):
    net, opt = tiny_net()
    path = str(tmp_path / "last.ckpt")
    save_checkpoint(path, net, opt, epoch=3)
    return path


def test_round_trip_restores_weights_and_progress(saved):
    net, opt = tiny_net()
    net.load_state_dict({"0.weight": np.zeros((3, 4), np.float32), "0.bias": np.ones(3, np.float32)})
    assert load_checkpoint(saved, net, opt) == {"epoch": 3}
    np.testing.assert_array_equal(net.state_dict()["0.weight"], MARKER)


def test_a_flipped_byte_in_the_array_data_is_refused(saved):
    data = bytearray(open(saved, "rb").read())
    at = data.find(MARKER.tobytes())
    assert at > 0
    data[at + 5] ^= 0x01
    open(saved, "wb").write(bytes(data))
    with pytest.raises(checkpoint.CorruptCheckpointError):
        read_checkpoint(saved)


def test_a_truncated_checkpoint_is_refused_as_corrupt(saved):
    data = open(saved, "rb").read()
    open(saved, "wb").write(data[:-10])
    with pytest.raises(checkpoint.CorruptCheckpointError):
        read_checkpoint(saved)


@pytest.mark.parametrize("version", [0, 1])
def test_a_header_whose_version_field_was_damaged_is_corrupt(saved, version):
    data = bytearray(open(saved, "rb").read())
    data[8:12] = version.to_bytes(4, "little")  # the version field follows the 8-byte magic
    open(saved, "wb").write(bytes(data))
    with pytest.raises(checkpoint.CorruptCheckpointError):
        read_checkpoint(saved)


def test_the_header_digest_is_the_sha256_of_the_payload(saved):
    data = open(saved, "rb").read()
    assert checkpoint_digest(saved) == hashlib.sha256(data[checkpoint.HEADER.size:]).hexdigest()


def test_save_returns_the_digest_it_wrote(tmp_path):
    net, opt = tiny_net()
    path = str(tmp_path / "a.ckpt")
    assert save_checkpoint(path, net, opt) == checkpoint_digest(path)


def test_a_version_1_checkpoint_still_loads(tmp_path):
    net, opt = tiny_net()
    path = tmp_path / "v1.ckpt"
    state = {"format": "nbcnn-checkpoint", "version": 1, "model": dict(net.state_dict()),
             "optimizer": opt.state_dict(), "rng": nbcnn.random.default_generator.get_state(),
             "progress": {"epoch": 5}}
    path.write_bytes(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
    assert load_checkpoint(str(path), *tiny_net()) == {"epoch": 5}


def test_a_version_1_checkpoint_has_no_digest(tmp_path):
    path = tmp_path / "v1.ckpt"
    path.write_bytes(pickle.dumps({"format": "nbcnn-checkpoint", "version": 1}))
    assert checkpoint_digest(str(path)) is None


def test_an_error_without_a_message_names_its_type(saved, monkeypatch):
    def out_of_memory(f):
        raise MemoryError()

    monkeypatch.setattr(checkpoint.pickle, "load", out_of_memory)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(saved)
    assert str(info.value).endswith(": MemoryError")


def test_a_file_of_another_kind_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_text("hello")
    with pytest.raises(CheckpointError):
        read_checkpoint(str(path))


def test_copy_keeps_the_digest(saved, tmp_path):
    copy_checkpoint(saved, str(tmp_path / "best.ckpt"))
    assert checkpoint_digest(str(tmp_path / "best.ckpt")) == checkpoint_digest(saved)


def test_stale_temporaries_of_atomic_write_are_recognised(tmp_path):
    with atomic_write(str(tmp_path / "last.ckpt")) as f:
        f.write(b"x")
        (temporary,) = set(os.listdir(tmp_path))  # what a SIGKILL here would leave behind
    (tmp_path / temporary).write_bytes(b"x")
    assert remove_stale_temporaries(str(tmp_path), ["last.ckpt"]) == [str(tmp_path / temporary)]


def test_stale_temporaries_of_other_files_are_left_alone(tmp_path):
    for name in (".last.ckpt.k3j9x2.tmp", ".metrics.csv.a1b2c3.tmp", ".notes.txt.a1b2c3.tmp", "last.ckpt.tmp"):
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_temporaries(str(tmp_path), ["last.ckpt", "metrics.csv"])
    assert sorted(os.path.basename(p) for p in removed) == [".last.ckpt.k3j9x2.tmp", ".metrics.csv.a1b2c3.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".notes.txt.a1b2c3.tmp", "last.ckpt.tmp"]
