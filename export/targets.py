"""Export targets, registered in one place: each writes its model files into the staging directory.

A target declares what its runtimes can run (`supports_deform_conv`, ops it rejects), which backend
loads its artifacts by default, and which backends check parity at export time. Adding a target is
one class with `@register_target` in its runtime's backend module (`edgecnn.export.backends`: `onnx` in
onnxruntime.py, `openvino` in openvino.py, `tensorrt` in tensorrt.py); nothing else branches on target names.
Importing this module (as every backend module does) imports no torch: the exporter loads when a target writes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgecnn.export.graph_io import ExportError
from edgecnn.registries import Registry

if TYPE_CHECKING:
    from edgecnn.export.passes import ExportContext

ONNX_FILE = "model.onnx"


@dataclass
class TargetOutput:
    files: list[str]                      # every file the artifact holds besides the manifest
    model_files: dict[str, str]           # format → file, what runtime backends look up
    default_backend: str
    parity_backends: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    io_dtype: str = "float32"             # of the graph's input and output
    # backend → what its parity check runs when that is not simply the artifact at its precision
    parity_measures: dict[str, str] = field(default_factory=dict)


class Target:
    name: ClassVar[str]
    description: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "int8")
    # Whether the target's runtime executes ONNX DeformConv; deformable layers read the target's name in
    # prepare_export and lower to GridSample + Conv where it does not.
    supports_deform_conv: ClassVar[bool] = False
    # Whether an FP16 artifact can take and return float16 (keep_io_types=False).
    half_io: ClassVar[bool] = False

    def write(self, ctx: ExportContext) -> TargetOutput:
        raise NotImplementedError

    def check_precision(self, precision: str) -> None:
        """Refuse, before any work, a precision this machine cannot run (bf16 without BF16 hardware)."""

    def check_ops(self, ops: dict[str, int], graph: Path | None = None) -> None:
        """Reject, with a specific message (naming the nodes when `graph`, the ONNX file, is given), ops the
        target's converter or runtime cannot take."""
        if "DeformConv" in ops and not self.supports_deform_conv:
            raise ExportError(f"the graph has {ops['DeformConv']} DeformConv node(s), which the {self.name} target "
                              "cannot run: the model's deformable layers must lower to GridSample + Conv in "
                              f"prepare_export({self.name!r})")

    def finish_int8(self, ctx: ExportContext, output: TargetOutput) -> None:
        """After the INT8 pass has quantized `output`'s model in `ctx.staging`: what the target builds from it."""

    def _write_onnx(self, ctx: ExportContext, name: str, half: bool) -> dict[str, Any]:
        from edgecnn.export.onnx_graph import HalfPrecision, export_onnx   # torch: only when a target writes
        from edgecnn.export.onnx_source import OnnxModel

        if isinstance(ctx.module, OnnxModel):  # an ONNX source: its folded graph, not a torch export
            report = ctx.module.write(ctx.staging / name, ctx.batch, ctx.dynamic_batch, half, ctx.keep_io_types,
                                      ctx.input_size)
            self.check_ops(report["ops"], ctx.staging / name)
            return report
        module = HalfPrecision(ctx.module, ctx.keep_io_types) if half else ctx.module
        example = ctx.example.half() if half and not ctx.keep_io_types else ctx.example
        report = export_onnx(module, example, ctx.staging / name, opset=ctx.opset,
                             dynamic_batch=ctx.dynamic_batch, exporter=ctx.exporter, output_names=ctx.output_names)
        self.check_ops(report["ops"], ctx.staging / name)
        return report


TARGETS: Registry[Target] = Registry("target", instantiate=True)
register_target = TARGETS.register   # @register_target on a Target subclass files an instance under its name
get_target = TARGETS.lookup


def __getattr__(name: str) -> Any:
    """`PRECISIONS`: every target's precisions, for the CLI ("fp32", "fp16", "int8", "bf16"), read from the targets
    the backends registered (computed when asked, so it holds them all)."""
    if name == "PRECISIONS":
        return tuple(dict.fromkeys(p for target in TARGETS.values() for p in target.precisions))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


from edgecnn.export import backends  # noqa: E402,F401  (each backend module registers its target)
