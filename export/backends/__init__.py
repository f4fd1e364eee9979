"""Backends: one module per runtime, each declaring everything edgecnn knows about it.

    from edgecnn.export.backends import BACKENDS
    onnxruntime = BACKENDS.lookup("onnxruntime")
    onnxruntime.target_name, onnxruntime.precisions, onnxruntime.session_names   # "onnx", (...), ("onnxruntime",)
    onnxruntime.unavailable()        # None where it runs here, else why not, in one line

A backend module (`export/backends/<name>.py`, named as its runtime) holds the runtime's target writer
(`targets.Target`), its session class(es) (`runtime.Session`), its quantizer(s) (`quantizers.Quantizer`), the tool
versions it records, whether it is available here, the composer of its target's single early-exit graph and its
per-layer profiler (`profile.ProfiledRun`), and
registers one `Backend` describing them. Every module in this folder is loaded when the package is (the eager
PyTorch reference first, then by name), so adding a runtime is adding its module here: bench's runtimes (and
`edgecnn bench`'s default list), the manifest's tools, the targets with a single early-exit graph, the profiled
runtimes, deploy's export target per runtime and every target → runtime mapping are read from `BACKENDS`, and
deploy's device kinds are those the backend modules register (`deploy.register_deploy_target`).

The base classes and their registries stay where they were (`targets.TARGETS`, `runtime.BACKENDS` for sessions,
`quantizers.QUANTIZERS`, re-exported by `quantize`); a backend module files its classes there, and those modules
load this package, so any of them finds every backend's entries.

A backend module imports, when it loads, only what its registrations need: its runtime's package, torch, the
quantization libraries (onnxruntime.quantization, NNCF, ModelOpt), the exporter and `edgecnn.calibration` load inside
the methods that use them, so `import edgecnn.export.runtime` (which loads this package) stays light.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from edgecnn.registries import Registry

if TYPE_CHECKING:
    from edgecnn.export.profile import ProfiledRun
    from edgecnn.export.quantizers import Quantizer
    from edgecnn.export.runtime import Session
    from edgecnn.export.targets import Target

# The runtime every other is held to (bench's reference, listed first); it runs any target's artifact.
REFERENCE = "torch"


@dataclass(frozen=True)
class Backend:
    """What edgecnn knows about one runtime, by reference to the classes its module defines."""
    name: str                                   # the runtime: bench's --runtimes word, its module's name
    description: str
    target: type[Target] | None                 # the export target whose artifacts it runs; None: any (the reference)
    sessions: tuple[type[Session], ...]         # runtime.load backends; the first is the runtime's own
    tools: tuple[str, ...]                      # distributions whose versions every manifest records
    unavailable: Callable[[], str | None]       # None where it runs here, else why not (one line)
    quantizers: tuple[type[Quantizer], ...] = ()  # INT8 for its target, the default first
    # An early-exit artifact's single graph for its target: (the stage model format it is composed from, the
    # composer, the graph's file name); None: the target has the stage loop only (early_exit_graph.py).
    early_exit_graph: tuple[str, Callable[..., None], str] | None = None
    # Its per-layer profiler (`edgecnn explain`, --placement fast, --fallback cost): a profile.ProfiledRun subclass,
    # made as (model file, artifact precision, threads, trace folder or None for the profiler off); None: none.
    profiler: type[ProfiledRun] | None = None
    # What its profiler's counter loses per node and inference by truncating to whole µs, on average.
    counter_truncation_us: float = 0.0

    @property
    def target_name(self) -> str | None:
        return self.target.name if self.target is not None else None

    @property
    def precisions(self) -> tuple[str, ...]:
        return self.target.precisions if self.target is not None else ("fp32",)

    @property
    def session_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sessions)

    @property
    def quantizer(self) -> Quantizer | None:
        """Its target's default quantizer (`quantizers.QUANTIZERS`), if it has one."""
        from edgecnn.export.quantizers import quantizers_for

        serving = quantizers_for(self.target_name) if self.target is not None else []
        return serving[0] if serving else None

    def tool_versions(self) -> dict[str, str | None]:
        """The installed versions of its tools; None where one is not installed."""
        return {tool: _version(tool) for tool in self.tools}


BACKENDS: Registry[Backend] = Registry("backend", unique=True)
register = BACKENDS.register   # register(Backend(...)) in the backend's module


def needs(module: str, hint: str) -> Callable[[], str | None]:
    """An `unavailable` for a runtime that needs only its Python package."""
    def unavailable() -> str | None:
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed here ({hint})"
        return None
    return unavailable


def target_runtimes() -> dict[str, str]:
    """Export target → the runtime that runs its artifacts ({"onnx": "onnxruntime", ...})."""
    return {b.target_name: b.name for b in BACKENDS.values() if b.target is not None}


def recorded_tools() -> tuple[str, ...]:
    """Every backend's recorded tools, in registry order, each once."""
    return tuple(dict.fromkeys(tool for b in BACKENDS.values() for tool in b.tools))


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def module_names() -> list[str]:
    """The backend modules of this folder, in loading order: the reference first, then by name."""
    return sorted((m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")),
                  key=lambda name: (name != REFERENCE, name))


for _name in module_names():
    importlib.import_module(f"{__name__}.{_name}")


__all__ = ["BACKENDS", "Backend", "REFERENCE", "module_names", "needs", "recorded_tools", "register",
           "target_runtimes"]
