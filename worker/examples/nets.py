"""Torch side of the example trainers: the networks, one training loop, and a
byte-stable `model.pt`.

Imported only once a trainer has parsed its flags, so a bad flag never pays for
`import torch`.

Determinism on the CPU: `torch.manual_seed(seed)`, one intra-op and one
inter-op thread (a different thread count changes the order of float sums),
`torch.use_deterministic_algorithms(True)`, and a shuffling generator seeded
from the spec. Same seed, hyper, host (CPU model, torch build) give the same
weights. `torch.save` alone is not byte-stable: in recent torch (2.13 here) the archive
holds a random `.data/serialization_id`; `state_dict_bytes` replaces it with
digits derived from the rest of the archive (and fixes its CRC), so identical
weights give an identical file.

On a GPU the weights differ from the CPU run, and between GPU models, drivers,
CUDA/cuDNN and torch versions. On one fixed GPU stack, runs repeat only
because we set `CUBLAS_WORKSPACE_CONFIG=:4096:8`, `cudnn.deterministic` and
`cudnn.benchmark = False` before CUDA starts, and compute the loss without
NLLLoss (no deterministic CUDA kernel). An op without a deterministic CUDA
kernel only warns (`warn_only=True`) instead of failing the job, and then
repeat runs may differ: attention's backward on some GPUs is one. metrics.json
records the device and its name.

Every epoch ends with a checkpoint in $TRAINLEDGER_CHECKPOINT_DIR, and a run
that finds one there continues from it (`worker.examples.resume`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

# cuBLAS reads this when its first handle is created: it must be set before any
# CUDA work, i.e. before torch is imported by this process.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np
import torch
from torch import nn

from worker.examples import common, resume
from worker.examples.common import Job
from worker.examples.data import Dataset

# ------------------------------------------------------------------ networks


class MLP(nn.Module):
    """Fully connected layers with ReLU: the tabular baseline next to gbt."""

    def __init__(self, n_in: int, n_out: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = n_in
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        blocks.append(nn.Linear(width, n_out))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """Two 3x3 conv layers, global average pooling, a linear head."""

    def __init__(self, in_channels: int, n_out: int, channels: int, dropout: float) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * channels, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        # mean and max pooling: a bar's position varies, its presence does not
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)


class RNN(nn.Module):
    """A GRU or LSTM over the sequence, classified from the last step's state."""

    def __init__(self, cell: str, n_in: int, n_out: int, hidden: int, layers: int,
                 bidirectional: bool, dropout: float) -> None:
        super().__init__()
        kind = {"gru": nn.GRU, "lstm": nn.LSTM}[cell]
        self.rnn = kind(n_in, hidden, num_layers=layers, batch_first=True,
                        bidirectional=bidirectional, dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1, :])


class Transformer(nn.Module):
    """A tiny encoder-only transformer over patches of the sequence (as PatchTST
    does): one raw sample per token gives attention too little to compare, a
    patch of a few steps already carries local shape. Positions start
    sinusoidal and are learned; pre-norm layers; mean pooling."""

    def __init__(self, n_in: int, n_out: int, seq_len: int, d_model: int, heads: int,
                 layers: int, ff: int, dropout: float, patch: int) -> None:
        super().__init__()
        stride = max(1, patch // 2)
        self.embed = nn.Conv1d(n_in, d_model, patch, stride=stride)
        tokens = (seq_len - patch) // stride + 1
        self.position = nn.Parameter(sinusoid(tokens, d_model)[None])
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=ff, dropout=dropout, batch_first=True,
            norm_first=True,
        )
        # enable_nested_tensor only matters for padded batches and warns otherwise
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.transpose(1, 2)).transpose(1, 2)
        return self.head(self.encoder(tokens + self.position).mean(dim=1))


def sinusoid(length: int, width: int) -> torch.Tensor:
    """The original transformer's position table, (length, width)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(1e4) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate[: width // 2])
    return table


# ------------------------------------------------------------------ training


def setup(job: Job) -> torch.device:
    """Seed and pin torch; pick CUDA only when the worker handed us a device."""
    torch.manual_seed(job.seed)
    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):  # already set once in this process
        torch.set_num_interop_threads(1)
    use_cuda = job.cuda_visible and torch.cuda.is_available()
    if use_cuda:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=use_cuda)
    return torch.device("cuda" if use_cuda else "cpu")


def fit(
    job: Job,
    data: Dataset,
    make_model: Callable[[], nn.Module],
    args: Any,
    model_name: str,
    extra: dict[str, Any] | None = None,
) -> None:
    """Train with AdamW and cross-entropy, evaluate on the held-out split, write
    model.pt, metrics.json and spec.json."""
    device = setup(job)
    common.progress(0.0)
    train_idx, test_idx = common.split_indices(len(data.y), job)
    x = torch.from_numpy(data.x).to(device)
    y = torch.from_numpy(data.y).to(device)
    x_train, y_train = x[train_idx], y[train_idx]
    x_test, y_test = x[test_idx], y[test_idx]
    model = make_model().to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    shuffle = torch.Generator().manual_seed(job.seed)
    n = len(train_idx)
    ckpt_dir = resume.checkpoint_dir()
    for epoch in range(resume.resume(ckpt_dir, model, optimiser, shuffle, args.epochs),
                       args.epochs):
        model.train()
        order = torch.randperm(n, generator=shuffle).to(device)
        for start in range(0, n, args.batch_size):
            batch = order[start : start + args.batch_size]
            optimiser.zero_grad(set_to_none=True)
            loss = cross_entropy(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimiser.step()
        resume.save_checkpoint(ckpt_dir, resume.training_state(epoch + 1, model, optimiser,
                                                               shuffle))
        if epoch + 1 < args.epochs:
            common.progress((epoch + 1) / args.epochs)

    test_correct, test_loss = _evaluate(model, x_test, y_test, args.batch_size)
    train_correct, train_loss = _evaluate(model, x_train, y_train, args.batch_size)
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    common.write_file(job, "model.pt", state_dict_bytes(state))
    metrics = {
        **common.accuracy_metrics(test_correct, data.y[test_idx], job),
        "loss": test_loss,
        "train_accuracy": float(train_correct.mean()),
        "train_loss": train_loss,
        "n_train": n,
        "n_test": len(test_idx),
        "input_shape": list(data.x.shape[1:]),
        "n_classes": data.n_classes,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "epochs": args.epochs,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_version": torch.__version__,
        **(extra or {}),
    }
    common.finish(job, model_name, metrics)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy from log_softmax and gather: `nn.CrossEntropyLoss` goes
    through NLLLoss, which has no deterministic CUDA kernel (torch raises, or with
    warn_only warns, under deterministic mode); gather's backward does."""
    picked = torch.log_softmax(logits, dim=1).gather(1, labels[:, None])
    return -picked.mean()


@torch.no_grad()
def _evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> tuple[np.ndarray, float]:
    model.eval()
    step = max(batch_size, 256)
    logits = torch.cat([model(x[i : i + step]) for i in range(0, len(x), step)])
    loss = float(cross_entropy(logits, y).item())
    correct = (logits.argmax(dim=1) == y).cpu().numpy()
    return correct, loss


# ------------------------------------------------------------------- saving


def state_dict_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """`torch.save` output with its random serialization id made deterministic.

    The id's length is kept, so the patch is done in place: the record's bytes,
    then its CRC-32 in the data descriptor (or local header) and the central
    directory. `torch.load` and `unzip -t` accept the result.
    """
    buf = io.BytesIO()
    torch.save(state, buf)
    data = bytearray(buf.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        infos = [i for i in archive.infolist() if i.filename.endswith("/.data/serialization_id")]
        start_dir = archive.start_dir
        content = hashlib.sha256()
        for other in archive.infolist():
            if other not in infos:
                content.update(other.filename.encode() + b"\0" + archive.read(other))
    if not infos:
        return bytes(data)  # a torch without the id: already deterministic
    info = infos[0]
    if info.compress_type != zipfile.ZIP_STORED:
        raise RuntimeError("torch.save compressed its serialization id: cannot patch it")
    off = info.header_offset
    name_len, extra_len = struct.unpack_from("<HH", data, off + 26)
    begin = off + 30 + name_len + extra_len
    end = begin + info.file_size
    old_crc = info.CRC
    digest = int(content.hexdigest(), 16)  # same records, same id
    new_id = str(digest).zfill(info.file_size)[-info.file_size :].encode()
    data[begin:end] = new_id
    new_crc = zlib.crc32(new_id)
    _patch_crc(data, off + 14, old_crc, new_crc)  # local header (0 with a data descriptor)
    if info.flag_bits & 0x08:  # data descriptor after the data, signature optional
        at = end + 4 if data[end : end + 4] == b"PK\x07\x08" else end
        _patch_crc(data, at, old_crc, new_crc)
    pos = start_dir
    while data[pos : pos + 4] == b"PK\x01\x02":
        n, m, k = struct.unpack_from("<HHH", data, pos + 28)
        if data[pos + 46 : pos + 46 + n].decode() == info.filename:
            _patch_crc(data, pos + 16, old_crc, new_crc)
            break
        pos += 46 + n + m + k
    else:
        raise RuntimeError("serialization id missing from the zip central directory")
    return bytes(data)


def _patch_crc(data: bytearray, at: int, old: int, new: int) -> None:
    (current,) = struct.unpack_from("<I", data, at)
    if current == old:
        struct.pack_into("<I", data, at, new)
    elif current != 0:
        raise RuntimeError(f"unexpected CRC at offset {at} in torch.save output")
