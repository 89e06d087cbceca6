"""Persistent per-GPU cache of tuned kernel configs, read by every forward through :func:`lookup`.

A cache file is JSON: ``{"lowbit_autotune": 1, "gpu": NAME, "entries": [ENTRY, ...]}`` where each
entry names the GPU, compute capability and triton version it was tuned with, the key
(family, scheme, N, K, group_size, dtype, path, m_bucket), the winning ``config`` and its time.
Entries tuned on another GPU or with another triton version are never used. Shipped files
live in ``lowbit/autotune/configs/<gpu-slug>.json``; the user's own results go to
``$LOWBIT_CACHE_DIR/autotune-<gpu-slug>.json`` (default ``~/.cache/lowbit``) and override
shipped entries. A corrupt or foreign file is ignored with one warning; a forward never fails
because of the cache. Nothing here touches CUDA or Triton at import.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Iterable, NamedTuple

import torch

from ..kernels import KernelConfig

FORMAT = 1
ENV_CACHE_DIR = "LOWBIT_CACHE_DIR"
ENV_ONLINE = "LOWBIT_AUTOTUNE"
SHIPPED_DIR = Path(__file__).resolve().parent / "configs"

try:  # POSIX advisory locks; elsewhere writes are still atomic, merges are last-writer-wins
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class AutotuneCacheWarning(UserWarning):
    """A cache file was ignored (corrupt, foreign) or no tuned configs exist for this GPU."""


class GpuInfo(NamedTuple):
    """What a tuned config depends on besides the problem: the GPU model and the compiler."""

    name: str
    capability: tuple[int, int]
    triton: str

    @property
    def slug(self) -> str:
        return gpu_slug(self.name)

    @property
    def cc(self) -> str:
        return f"{self.capability[0]}.{self.capability[1]}"


class CacheKey(NamedTuple):
    """The problem a config was tuned for (the GPU and triton version are checked per file entry)."""

    family: str
    scheme: str
    N: int
    K: int
    group_size: int  # spec.group_size (-1 per channel), 0 for schemes without groups
    dtype: str  # activation dtype, e.g. "float16"
    path: str  # "gemv" / "gemm"
    m_bucket: int

    @classmethod
    def of(cls, family, qw, path, m_bucket: int, dtype) -> "CacheKey":
        """The key of `family`'s kernel on `qw` for an activation `dtype` and M bucket."""
        fam = family if isinstance(family, str) else family.name
        return cls(fam, qw.scheme.value, int(qw.N), int(qw.K), int(getattr(qw.spec, "group_size", 0)),
                   dtype_name(dtype), str(getattr(path, "value", path)), int(m_bucket))

    def label(self) -> str:
        return (f"{self.family}/{self.scheme} {self.N}x{self.K} g{self.group_size} {self.dtype} "
                f"{self.path} M<={self.m_bucket}")


_DTYPE_NAMES: dict = {}


def dtype_name(dtype) -> str:
    """'float16' for torch.float16 (strings pass through)."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = str(dtype).replace("torch.", "")
        _DTYPE_NAMES[dtype] = name
    return name


def gpu_slug(name: str) -> str:
    """A file-name-safe form of a GPU name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-") or "unknown-gpu"


def shipped_path(gpu: GpuInfo | str) -> Path:
    """Where the configs shipped with lowbit for this GPU would be."""
    slug = gpu.slug if isinstance(gpu, GpuInfo) else gpu_slug(gpu)
    return SHIPPED_DIR / f"{slug}.json"


def user_path(gpu: GpuInfo | str) -> Path:
    """The user's cache file for this GPU ($LOWBIT_CACHE_DIR or ~/.cache/lowbit)."""
    slug = gpu.slug if isinstance(gpu, GpuInfo) else gpu_slug(gpu)
    root = os.environ.get(ENV_CACHE_DIR) or os.path.join(os.path.expanduser("~"), ".cache", "lowbit")
    return Path(root) / f"autotune-{slug}.json"


def gpu_info(device=None) -> GpuInfo:
    """GpuInfo of a CUDA device (initialises CUDA; only called once a CUDA tensor exists)."""
    import triton

    if device is None or isinstance(device, int):
        idx = torch.device("cuda", torch.cuda.current_device() if device is None else device)
    else:
        idx = torch.device(device)
    return GpuInfo(torch.cuda.get_device_name(idx), tuple(torch.cuda.get_device_capability(idx)),
                   triton.__version__)


# -- warnings -------------------------------------------------------------------------------
_WARNED: set = set()
_LOCK = threading.RLock()


def _warn_once(tag, message: str) -> None:
    if tag in _WARNED:
        return
    _WARNED.add(tag)
    warnings.warn(message, AutotuneCacheWarning, stacklevel=3)


# -- file format ----------------------------------------------------------------------------
def make_entry(gpu: GpuInfo, key: CacheKey, config: KernelConfig, us: float | None = None,
               heuristic_us: float | None = None) -> dict:
    """One JSON entry: GPU/cc/triton, the key fields, the config and (optionally) its time in µs."""
    e = {"gpu": gpu.name, "cc": gpu.cc, "triton": gpu.triton, **key._asdict(), "config": config.to_dict()}
    if us is not None:
        e["us"] = round(float(us), 3)
    if heuristic_us is not None:
        e["heuristic_us"] = round(float(heuristic_us), 3)
    return e


def _entry_id(e: dict) -> tuple:
    return (e["gpu"], e["cc"], e["triton"]) + tuple(e[f] for f in CacheKey._fields)


def _entry_key(e: dict) -> CacheKey:
    k = CacheKey(*(e[f] for f in CacheKey._fields))
    ints = ("N", "K", "group_size", "m_bucket")
    if not all(isinstance(getattr(k, f), int) and not isinstance(getattr(k, f), bool) for f in ints):
        raise ValueError("N, K, group_size and m_bucket must be integers")
    if not all(isinstance(getattr(k, f), str) for f in ("family", "scheme", "dtype", "path")):
        raise ValueError("family, scheme, dtype and path must be strings")
    if not (isinstance(e["gpu"], str) and isinstance(e["cc"], str) and isinstance(e["triton"], str)):
        raise ValueError("gpu, cc and triton must be strings")
    return k


def _entry_problem(e) -> str | None:
    """Why one cache entry cannot be used (None when it can): missing or mistyped key fields, a bad config."""
    if not isinstance(e, dict):
        return "not an object"
    try:
        _entry_key(e)
        KernelConfig.from_dict(e["config"])
    except (KeyError, TypeError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def read_file(path: Path) -> tuple[list[dict], list[str]]:
    """(valid entries, one line per rejected entry) of a cache file; ([], []) when it does not exist.

    Raises ValueError when the file as a whole is not a lowbit autotune file (bad JSON, too deeply
    nested to parse, wrong format); single bad entries are rejected, the rest kept.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], []
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ValueError(f"not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply to parse") from None
    if not isinstance(doc, dict) or doc.get("lowbit_autotune") != FORMAT or not isinstance(doc.get("entries"), list):
        raise ValueError(f"not a lowbit autotune file (format {FORMAT})")
    good, rejected = [], []
    for i, e in enumerate(doc["entries"]):
        problem = _entry_problem(e)
        if problem:
            rejected.append(f"entry {i}: {problem}"[:300])
        else:
            good.append(e)
    return good, rejected


def read_entries(path: Path) -> list[dict]:
    """The valid entries of a cache file ([] when it does not exist); ValueError when the file is corrupt."""
    return read_file(path)[0]


def load_configs(path: Path, gpu: GpuInfo) -> dict[CacheKey, KernelConfig]:
    """The configs in `path` tuned on `gpu` with its triton version; warns (once) about corrupt or foreign files
    and about invalid entries, which are skipped (their keys fall back to the heuristic)."""
    try:
        entries, rejected = read_file(path)
    except (OSError, ValueError) as e:
        _warn_once(("corrupt", str(path)), f"lowbit: ignoring autotune cache {path}: {e}; "
                                           "falling back to heuristic configs")
        return {}
    if rejected:
        _warn_once(("rejected", str(path)), f"lowbit: ignoring {len(rejected)} invalid entr"
                   f"{'y' if len(rejected) == 1 else 'ies'} of autotune cache {path} ({rejected[0]}"
                   f"{'; ...' if len(rejected) > 1 else ''}); their keys use heuristic configs")
    out, foreign = {}, set()
    for e in entries:
        if (e["gpu"], e["cc"], e["triton"]) == (gpu.name, gpu.cc, gpu.triton):
            out[_entry_key(e)] = KernelConfig.from_dict(e["config"])
        else:
            foreign.add(f"{e['gpu']} (cc {e['cc']}, triton {e['triton']})")
    if foreign and not out:
        _warn_once(("foreign", str(path), gpu), f"lowbit: ignoring autotune cache {path}: its entries were tuned "
                   f"for {', '.join(sorted(foreign))}, not {gpu.name} (cc {gpu.cc}, triton {gpu.triton})")
    return out


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive advisory lock on `path`.lock, held while a writer reads, merges and replaces."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def merge_into_file(path: Path, entries: Iterable[dict], gpu_name: str = "") -> int:
    """Merge `entries` into the cache file at `path` (new ones win) and replace it atomically.

    Under an exclusive lock the file is re-read, merged and written to a temp file in the same
    directory, then ``os.replace``d, so concurrent writers keep each other's entries and a
    reader never sees a half-written file. A corrupt existing file is replaced. Returns the
    number of entries in the file afterwards.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path):
        try:
            old = read_entries(path)
        except ValueError as e:
            _warn_once(("replace", str(path)), f"lowbit: replacing corrupt autotune cache {path}: {e}")
            old = []
        merged = {_entry_id(e): e for e in old}
        for e in entries:
            _entry_key(e)
            KernelConfig.from_dict(e["config"])
            merged[_entry_id(e)] = e
        doc = {"lowbit_autotune": FORMAT, "gpu": gpu_name or (old[0]["gpu"] if old else ""),
               "entries": [merged[k] for k in sorted(merged, key=lambda t: tuple(map(str, t)))]}
        fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return len(doc["entries"])


# -- in-memory tables ------------------------------------------------------------------------
_TABLES: dict = {}  # GpuInfo -> {CacheKey: KernelConfig}
_DEVICE_GPU: dict = {}  # cuda device index -> GpuInfo
_FAILED: set = set()  # (GpuInfo, CacheKey) whose online tuning failed: not retried
_TUNING: list = []  # keys being tuned online (re-entry guard)
_online: list = [None]  # None: follow $LOWBIT_AUTOTUNE


def table_for(gpu: GpuInfo) -> dict[CacheKey, KernelConfig]:
    """Shipped entries for `gpu`, overridden by the user's cache; loaded once per process."""
    table = _TABLES.get(gpu)
    if table is not None:
        return table
    with _LOCK:
        if gpu in _TABLES:
            return _TABLES[gpu]
        shipped, user = shipped_path(gpu), user_path(gpu)
        table = load_configs(shipped, gpu)
        table.update(load_configs(user, gpu))
        if not table and not shipped.exists():
            _warn_once(("unknown", gpu), f"lowbit: no tuned kernel configs for GPU {gpu.name!r} (cc {gpu.cc}, "
                       f"triton {gpu.triton}); using heuristic configs. Run `python -m lowbit tune` to tune "
                       f"them (results go to {user})")
        _TABLES[gpu] = table
        return table


def _device_gpu(index) -> GpuInfo:
    gpu = _DEVICE_GPU.get(index)
    if gpu is None:
        gpu = _DEVICE_GPU[index] = gpu_info(index)
    return gpu


def lookup(family, qw, path, m_bucket, dtype):
    """Return a cached KernelConfig for this key, or None to use the family's heuristic.

    Called on every forward: after the first call per GPU it is a dict lookup. CPU tensors
    (the interpreter) return None at once. When online tuning is on (:func:`enable_online_tuning`
    or LOWBIT_AUTOTUNE=1) a miss benchmarks the family's space once and caches the winner;
    never while torch.compile traces or a CUDA graph is being captured.
    """
    dev = qw.device
    if dev.type != "cuda":
        return None
    cfg = _lookup_key(dev.index, getattr(family, "name", family), qw.scheme.value, qw.N, qw.K,
                      getattr(qw.spec, "group_size", 0), dtype, getattr(path, "value", path), m_bucket)
    if cfg is None and not _compiling() and online_tuning_enabled():
        try:
            cfg = _tune_online(family, qw, path, int(m_bucket), dtype, _device_gpu(dev.index))
        except Exception as e:  # the cache must never break a forward
            _warn_once(("online", type(e).__name__), f"lowbit: online tuning unavailable ({type(e).__name__}: "
                       f"{e}); using heuristic configs")
    return cfg


def warn_invalid(family, qw, path, m_bucket, dtype, config: KernelConfig, problem: str) -> None:
    """One warning per key when a cached config cannot run (dispatch then uses the heuristic)."""
    key = CacheKey.of(family, qw, path, m_bucket, dtype)
    _warn_once(("invalid", key, config), f"lowbit: ignoring the cached config {config.label()} for {key.label()}: "
               f"{problem}; using the heuristic config")


def _lookup_key(device_index, family, scheme, n, k, group_size, dtype, path, m_bucket):
    """The table lookup proper: plain arguments only, so torch.compile can run it at trace time."""
    try:
        gpu = _device_gpu(device_index)
        table = _TABLES.get(gpu)
        if table is None:
            table = table_for(gpu)
        return table.get(CacheKey(family, scheme, int(n), int(k), int(group_size), dtype_name(dtype), str(path),
                                  int(m_bucket)))
    except Exception as e:  # the cache must never break a forward
        _warn_once(("lookup", type(e).__name__), f"lowbit: autotune cache lookup failed ({type(e).__name__}: {e}); "
                   "using heuristic configs")
        return None


# What torch.compiler.assume_constant_result(_lookup_key) does, without importing torch._dynamo
# here (seconds): Dynamo calls the function while tracing and uses its result as a constant,
# so file loading and dict lookups never appear in (or break) a compiled graph.
_lookup_key._dynamo_marked_constant = True


def _compiling() -> bool:
    fn = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(fn()) if fn is not None else False


def record(results, gpu: GpuInfo, path: Path | None = None) -> Path:
    """Persist tuner results (objects with .key, .best, .best_us, .heuristic_us) for `gpu`; returns the file.

    Written to the user cache unless `path` names another file; results written to the user
    cache also take effect in this process at once.
    """
    user = user_path(gpu)
    path = Path(path) if path is not None else user
    entries = [make_entry(gpu, r.key, r.best, r.best_us, r.heuristic_us) for r in results]
    merge_into_file(path, entries, gpu.name)
    with _LOCK:
        if gpu in _TABLES and path.resolve() == user.resolve():
            for r in results:
                _TABLES[gpu][r.key] = r.best
    return path


# -- online tuning ----------------------------------------------------------------------------
def enable_online_tuning(enabled: bool = True) -> None:
    """Let a forward that misses the cache tune its key once (benchmarks on the GPU) and cache it."""
    _online[0] = bool(enabled)


def online_tuning_enabled() -> bool:
    if _online[0] is not None:
        return _online[0]
    return os.environ.get(ENV_ONLINE, "0").strip().lower() not in ("", "0", "false", "no", "off")


def _tune_online(family, qw, path, m_bucket, dtype, gpu):
    key = CacheKey.of(family, qw, path, m_bucket, dtype)
    if _TUNING or (gpu, key) in _FAILED:
        return None
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return None
    from ..kernels import families
    from .tuner import tune

    fam = family if not isinstance(family, str) else next((f for f in families() if f.name == family), None)
    if fam is None:
        return None
    _TUNING.append(key)
    try:
        result = tune(fam, path, qw, m_bucket, dtype)
    except Exception as e:
        _FAILED.add((gpu, key))
        _warn_once(("tune", gpu, key), f"lowbit: online tuning of {key.label()} failed "
                   f"({type(e).__name__}: {e}); using the heuristic config")
        return None
    finally:
        _TUNING.pop()
    table_for(gpu)[key] = result.best  # used from now on even if it cannot be saved
    try:
        record([result], gpu)
    except Exception as e:
        _warn_once(("save", gpu), f"lowbit: could not save tuned configs to {user_path(gpu)} "
                   f"({type(e).__name__}: {e}); they last until the process ends")
    return result.best


def clear() -> None:
    """Forget loaded files, warnings and failed keys (tests; after editing cache files by hand)."""
    with _LOCK:
        _TABLES.clear()
        _DEVICE_GPU.clear()
        _FAILED.clear()
        _WARNED.clear()
        _online[0] = None
