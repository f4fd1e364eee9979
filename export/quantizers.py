"""The quantizers' base and registry: `Quantizer`s filed in `QUANTIZERS` by name, each naming the target it quantizes;
a target may have several, and the first its backend module registers is its default (`--quantizer` picks another).

Each backend module (`edgecnn.export.backends`) subclasses `Quantizer` and registers it with `@register_quantizer`
when it is imported, so this module imports no quantization library, no torch and no calibration code: a backend
module loads for its session without them, and each quantizer imports its library inside the methods that run it.
The INT8 pass that drives them (`quantize_model`, `Quantize`, `check_int8`) is `edgecnn.export.quantize`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgecnn.errors import UserError
from edgecnn.registries import Registry

if TYPE_CHECKING:
    from edgecnn.calibration import CalibrationData
    from edgecnn.export.passes import ExportContext
    from edgecnn.export.quantize import GraphInput

# Ops ONNX Runtime runs only in float, whose weights edgecnn still stores in INT8 (deform_resnet_fmnist: the
# DeformConv weights are half the model; the file is 62 % of FP32 without this).
WEIGHTS_ONLY_OPS = ("DeformConv",)


class Quantizer:
    """Turns the target's FP32 model files into INT8 ones in place; each calibrator maps to a library setting, and
    `library` (where a quantizer has it) is the library's own defaults, exactly as a user calling it alone gets."""
    name: ClassVar[str]                      # --quantizer, quantize(quantizer=); the manifest records it
    target: ClassVar[str]                    # the export target whose model files it quantizes
    tool: ClassVar[str]
    calibrators: ClassVar[dict[str, str]]    # edgecnn's name → what the library calls it (for the manifest)
    model_format: ClassVar[str]              # the key of model_files this quantizer rewrites
    max_drop_by: ClassVar[str | None] = None  # how --max-drop is honoured; None: it is not
    ranked_by: ClassVar[str] = ""             # what `sensitivity` ranks nodes by, for the manifest
    scored_on: ClassVar[str]                  # the session that runs its model files (edgecnn.quantize scores on it)
    scheme: ClassVar[str]                     # what the INT8 model is, for the manifest
    library_scheme: ClassVar[str | None] = None  # what the "library" calibrator's INT8 model is, where it differs

    def scheme_of(self, calibrator: str) -> str:
        return self.library_scheme if calibrator == "library" and self.library_scheme else self.scheme

    # calibrator → why `--calibrator auto` does not try it (it stays available by name)
    auto_skips: ClassVar[dict[str, str]] = {}

    def auto_candidates(self) -> list[str]:
        """What `--calibrator auto` tries, in order: the first is kept unless another is significantly better."""
        return [c for c in self.calibrators if c not in self.auto_skips]

    def available(self) -> str | None:
        """None when the quantizer's library imports, else what to install."""
        return None

    def quantize(self, graph: GraphInput, fp32: Path, out: Path, calibrator: str, data: CalibrationData,
                 exclude: list[str]) -> None:
        raise NotImplementedError

    def files(self, model_file: str) -> list[str]:
        """The files the model `model_file` consists of (the model file plus any weights file beside it)."""
        return [model_file]

    def sensitivity(self, graph: GraphInput, fp32: Path, data: CalibrationData) -> list[str]:
        """Quantized nodes, most sensitive first, for edgecnn's float fallback (quantizers with max_drop_by)."""
        raise NotImplementedError

    def accuracy_control(self, graph: GraphInput, fp32: Path, out: Path, calibrator: str, data: CalibrationData,
                         fp32_accuracy: float, max_drop: float) -> dict[str, Any] | None:
        """Quantize within `max_drop` with the library's own accuracy control; None if edgecnn's fallback applies."""
        return None

    def float_nodes(self, model: Path) -> list[str]:
        """Compute nodes the quantized model still runs in float (for the manifest); here, of a Q/DQ ONNX graph,
        whichever quantizer placed them (ONNX Runtime's own choices, ModelOpt's GEMV and small-channel rules)."""
        import onnx

        graph = onnx.load(str(model), load_external_data=False).graph
        dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        # Quantized compute reads both its activation and its weights through DequantizeLinear; a weights-only op
        # computes in float whatever it reads.
        return [n.name for n in graph.node if n.op_type in WEIGHTS_ONLY_OPS or (
                n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose")
                and not all(i in dequantized for i in n.input[:2]))]

    def nodes_after(self, model: Path, output: str) -> list[str]:
        """The names of the nodes that compute from the graph output `output` onward (what a quantizer's
        `exclude` takes), e.g. an early-exit stage's in-graph entropy of its logits, which stays float."""
        return onnx_nodes_after(model, output)

    def compact(self, model: Path, fp32: Path) -> None:
        """Last rewrite of the chosen INT8 model file that leaves its numbers alone (shorter names)."""

    def finish(self, ctx: ExportContext, fp32: Path, calibrator: str) -> list[str]:
        """Write what the target's INT8 artifact carries besides the model (a TensorRT cache); returns the files."""
        return []


QUANTIZERS: Registry[Quantizer] = Registry("quantizer", instantiate=True, unique=True,
                                           unknown="unknown quantizer {name!r}; choose one of {choices}")
register_quantizer = QUANTIZERS.register   # @register_quantizer on a Quantizer subclass files an instance by name


def quantizers_for(target: str) -> list[Quantizer]:
    """The quantizers of the export target `target`, its default first."""
    return [q for q in QUANTIZERS.values() if q.target == target]


def get_quantizer(target: str, name: str | None = None) -> Quantizer:
    """The quantizer `name` (None: the target's default), or one line saying why it cannot quantize `target`."""
    serving = quantizers_for(target)
    if name is None:
        if not serving:
            with_int8 = sorted({q.target for q in QUANTIZERS.values()})
            raise UserError(f"the {target} target has no INT8 quantizer; INT8 exports to {', '.join(with_int8)}")
        return serving[0]
    quantizer = QUANTIZERS.lookup(name)
    if quantizer.target != target:
        raise UserError(f"the {name} quantizer quantizes {quantizer.target} artifacts, not {target}: choose "
                        + (", ".join(q.name for q in serving) if serving else f"another target than {target}"))
    return quantizer


def onnx_nodes_after(model: Path, output: str) -> list[str]:
    """The nodes of the ONNX graph `model` that compute from its tensor `output` onward."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    reached, names = {output}, []
    for node in graph.node:  # ONNX nodes are stored in topological order
        if any(i in reached for i in node.input):
            reached.update(node.output)
            names.append(node.name)
    return names


from edgecnn.export import backends  # noqa: E402,F401  (each backend module registers its quantizers)

__all__ = ["QUANTIZERS", "Quantizer", "WEIGHTS_ONLY_OPS", "get_quantizer", "onnx_nodes_after", "quantizers_for",
           "register_quantizer"]
