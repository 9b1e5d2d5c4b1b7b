"""`peftx export RUN_DIR OUT_DIR`: a finished run as files others load with the libraries they use.

OUT_DIR/
  adapter_config.json        peft's config (base model by hub id or path) ... for methods peft
  adapter_model.safetensors  ... expresses: any tuner injected by peft (LoRA, DoRA, rsLoRA, IA3, ...)
  body/                      the body (transformers `save_pretrained`: config.json, model.safetensors):
                             from-scratch runs, methods peft cannot express, config overrides
  task_layers.safetensors    input layer, soft prompt (as each declares itself: `peftx.inputs.exported_input`,
                             `MethodExtra.export_spec`), head, trained body tensors
  task.json                  symbols (their order), framing, labels (`peftx.runs.task_file`) + what the export holds
  task_model.py              `TaskModel`: the layers around the body, in torch alone (`peftx.export.template`)
  recipe.yaml, result.json   the run's own files
  README.md                  model card: recipe, budget, metrics, baselines, versions, the command

The export is rebuilt in float32 with an unquantized body (a quantized run's adapter applies to the
full-precision base; quantize that as you like). It is written into a temporary sibling directory and
renamed into place, so a failure leaves no half export.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from peft import get_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file

from peftx.errors import PeftxError
from peftx.export import template
from peftx.export.card import BODY_DIR, Export, model_card
from peftx.inputs import exported_input
from peftx.model.loading import OFFLINE_DECODER
from peftx.model.sources import OFFLINE, OFFLINE_NAME, is_local
from peftx.model.task_model import PeftxModel
from peftx.recipe import read_raw, validate_recipe
from peftx.runs.record import RECIPE, RESULT, RunRecord, check_same_backbone
from peftx.runs.task_file import TASK_FILE, task_description
from peftx.runs.weights import load_weights
from peftx.spec.input_spec import InputSpec
from peftx.training.session import Session, open_session

ADAPTER_NAME = "default"  # the name peftx's methods inject their peft adapter under
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LAYERS_FILE = template.LAYERS_FILE
SNIPPET = "task_model.py"
# The run is rebuilt as plain float32, whatever it trained in, and with a full-precision body.
EXPORT_OVERRIDES = [
    "train.precision=fp32",
    "model.dtype=float32",
    "model.quantization=none",
    *(f"model.{k}=null" for k in ("quant_type", "double_quant", "compute_dtype")),  # 4-bit settings
]


def is_export(path: Path) -> bool:
    """Whether `path` holds an export of peftx's own: its loading template and a task.json with an
    `export` section."""
    try:
        task = json.loads((path / TASK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (path / SNIPPET).is_file() and isinstance(task, dict) and "export" in task


def check_out_dir(out_dir: Path, run_dir: Path, overwrite: bool) -> None:
    """Refuse an OUT_DIR that would lose something the user has: the run being exported (or a folder
    holding it, or a folder inside it), a file, or a non-empty directory that is not a previous export
    (or is one, without `overwrite`)."""
    out, run = out_dir.resolve(), run_dir.resolve()
    if out == run or out.is_relative_to(run) or run.is_relative_to(out):
        raise PeftxError(f"{out_dir}: is, holds or lies inside the run being exported ({run_dir}); export elsewhere")
    if out_dir.exists() and not out_dir.is_dir():
        raise PeftxError(f"{out_dir}: exists and is not a directory")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not is_export(out_dir):
        raise PeftxError(f"{out_dir}: exists, is not empty and is not a peftx export; choose another OUT_DIR")
    if not overwrite:
        raise PeftxError(f"{out_dir}: holds an export already; pass --overwrite to replace it")


def base_reference(recipe) -> str | None:
    """The hub id or path the body loads from; None where the body itself must be exported (from
    scratch, shuffled or self-pretrained weights, or a config changed by `model.config_overrides`)."""
    m = recipe.model
    if m.init != "pretrained" or m.config_overrides or m.source == OFFLINE_DECODER:  # no hub holds these weights
        return None
    if m.source == OFFLINE:
        return OFFLINE_NAME
    return str(Path(m.source).expanduser().resolve()) if is_local(m.source) else m.source


def _adapter_names(backbone: torch.nn.Module) -> set[str]:
    """Names of the tensors peft added to `backbone` (as `PeftxModel.param_infos` finds them)."""
    names = set()
    for mod_name, module in backbone.named_modules():
        if isinstance(module, BaseTunerLayer):
            # adapter_layer_names: the trained tensors; other_param_names may hold modules too, e.g.
            # VeRA's shared random projections (vera_A, vera_B), which are no part of the body either
            for attr in (*module.adapter_layer_names, *module.other_param_names):
                part = getattr(module, attr, None)
                if isinstance(part, torch.nn.Module):
                    names.update(f"{mod_name}.{attr}.{pn}" for pn, _ in part.named_parameters())
                    names.update(f"{mod_name}.{attr}.{bn}" for bn, _ in part.named_buffers())
    return names


def plain_body_state(backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's own tensors under transformers' names (peft's adapters and wrappers removed)."""
    adapters = _adapter_names(backbone)
    return {
        n.replace(".base_layer.", "."): t.detach().float().contiguous()
        for n, t in backbone.state_dict().items()
        if n not in adapters
    }


def save_body(model: PeftxModel, out: Path) -> None:
    """The body as `save_pretrained` writes it, config.json + model.safetensors, in `out/body/` (apart
    from the adapter: transformers would load an adapter_config.json beside them by itself)."""
    body = model.family.build(model.backbone.config)
    body.load_state_dict(plain_body_state(model.backbone), strict=True)
    body.save_pretrained(out / BODY_DIR)


def save_adapter(backbone: torch.nn.Module, out: Path, base: str) -> None:
    """peft's adapter files, through peft's own state-dict and config machinery (any tuner)."""
    config = backbone.peft_config[ADAPTER_NAME]
    config.base_model_name_or_path = base
    config.inference_mode = True
    if getattr(config, "save_projection", False):
        # VeRA-like tuners: the shared random projections are drawn again from the config's seed
        # (projection_prng_key) when peft loads the adapter, so they need not travel (peft's own option)
        config.save_projection = False
    config.save_pretrained(str(out))
    state = get_peft_model_state_dict(backbone, adapter_name=ADAPTER_NAME, save_embedding_layers=False)
    # PeftModel.save_pretrained writes its keys from the wrapper, whose body sits at base_model.model
    state = {f"base_model.model.{k}": v.detach().float().contiguous() for k, v in state.items()}
    save_file(state, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def _check_kind(what: str, kind: str, known: dict, tensors: dict, settings: dict) -> None:
    """Refuse a declared export the template cannot apply: an unknown kind, or other tensors or
    settings than the kind reads.

    Raises:
        PeftxError: naming the layer, the kind and what it takes.
    """
    layer = known.get(kind)
    if layer is None:
        raise PeftxError(f"{what}: export kind {kind!r} is not one task_model.py applies (known: {', '.join(known)})")
    if set(tensors) != set(layer.TENSORS) or set(settings) != set(layer.SETTINGS):
        raise PeftxError(
            f"{what}: export kind {kind!r} takes tensors {list(layer.TENSORS)} and settings {list(layer.SETTINGS)}, "
            f"not {sorted(tensors)} and {sorted(settings)}"
        )


def _add(out: dict, notes: dict, prefix: str, tensors: dict, settings: dict, what: str) -> None:
    """Put a layer's tensors (as `<prefix>.<name>`) and settings (into task.json's `export` section)
    with the rest, refusing a name already taken (two extras of one kind: the template applies one).

    Raises:
        PeftxError: naming the layer and the names taken.
    """
    named = {f"{prefix}.{n}": t for n, t in tensors.items()}
    clash = sorted(set(named) & set(out)) + sorted(set(settings) & ({"adapter", "base"} | set(notes)))
    if clash:
        raise PeftxError(f"{what}: export name(s) {clash} already taken by another layer")
    out.update(named)
    notes.update(settings)


def task_layers(model: PeftxModel, spec: InputSpec, body_exported: bool) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of the layers around the body, and what task.json says about them. The input
    layer and each method extra say what they contribute (`peftx.inputs.exported_input`,
    `MethodExtra.export_spec`); this checks that the template applies it.

    Raises:
        PeftxError: an input layer with no plain form here, or a declared export the template cannot apply.
    """
    out: dict[str, torch.Tensor] = {}
    notes: dict = {}
    with torch.no_grad():
        inp = exported_input(model.input, spec)
        _check_kind("input", inp.kind, template.INPUT_KINDS, inp.tensors, inp.settings)
        notes["input_kind"] = inp.kind
        _add(out, notes, "input", inp.tensors, inp.settings, "input")
        head = model.head[1]
        out["head.weight"], out["head.bias"] = head.weight, head.bias
        if model.output_scale is not None:  # regression: the targets' training mean and deviation
            out["output_scale.loc"], out["output_scale.scale"] = model.output_scale.loc, model.output_scale.scale
        for role, extra in model.extras.items():
            exported = extra.export_spec()
            what = f"method extra {role!r}"
            if exported.kind is None:  # carried along, but only peftx applies it
                notes["needs_peftx"] = f"its {role} modules {exported.needs_peftx}"
                _add(out, notes, f"extras.{role}", exported.tensors, exported.settings, what)
                continue
            _check_kind(what, exported.kind, template.EXTRA_KINDS, exported.tensors, exported.settings)
            _add(out, notes, exported.kind, exported.tensors, exported.settings, what)
        if not body_exported:  # trained body tensors outside the adapter (e.g. `train_roles`)
            adapters = _adapter_names(model.backbone)
            for n, p in model.backbone.named_parameters():
                if p.requires_grad and n not in adapters:
                    out[f"body.{n.replace('.base_layer.', '.')}"] = p
    return {k: v.detach().float().contiguous().cpu() for k, v in out.items()}, notes


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    overwrite: bool = False,
    command: str | None = None,
    allow_changed_weights: bool = False,
) -> Export:
    """Export a finished run (see the module docstring for what OUT_DIR holds).

    Args:
        run_dir: a completed run directory.
        out_dir: where to write; must not exist or be empty, unless `overwrite`.
        overwrite: replace a non-empty out_dir.
        command: the command line to record in the model card (default: the `peftx export` that does this).
        allow_changed_weights: export although the backbone's weights' sha256 differs from the recorded one.

    Raises:
        PeftxError: not a completed run, an out_dir that may not be written, a model with no plain form.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    record = RunRecord.read(run_dir)
    if not record.completed:
        raise PeftxError(f"{run_dir}: run status is {record.status!r}, not 'completed'; nothing to export")
    check_out_dir(out_dir, run_dir, overwrite)
    session = _trained_session(run_dir, record, allow_changed_weights)
    model = session.model
    adapter = hasattr(model.backbone, "peft_config") and ADAPTER_NAME in model.backbone.peft_config
    base = base_reference(session.recipe) if adapter else None
    body_exported = base is None
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.export-", dir=out_dir.parent))  # one per writer
    try:
        if body_exported:
            save_body(model, tmp)
        if adapter:
            save_adapter(model.backbone, tmp, base or str(out_dir.resolve() / BODY_DIR))
        tensors, notes = task_layers(model, session.info.input_spec, body_exported)
        save_file(tensors, str(tmp / LAYERS_FILE), metadata={"format": "pt"})
        task = task_description(session.info, model)
        task["export"] = {"adapter": adapter, "base": base, **notes}
        (tmp / TASK_FILE).write_text(json.dumps(task, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        shutil.copyfile(template.__file__, tmp / SNIPPET)
        for name in (RECIPE, RESULT):
            shutil.copyfile(run_dir / name, tmp / name)
        info = Export(out_dir=out_dir, base=base, adapter=adapter)
        cmd = command or f"peftx export {run_dir} {out_dir}" + (" --overwrite" if overwrite else "")
        (tmp / "README.md").write_text(model_card(record, info, task, cmd), encoding="utf-8")
        info.files = sorted(p.name for p in tmp.iterdir())
        _move_into_place(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def _trained_session(run_dir: Path, record: RunRecord, allow_changed_weights: bool) -> Session:
    """The run's model rebuilt from its recipe (in fp32, `EXPORT_OVERRIDES`) with its trained weights.

    Raises:
        PeftxError: an ablated body (no plain form), backbone weights changed since training (unless
            allowed), weights that do not fit.
    """
    recipe = validate_recipe(read_raw(run_dir / RECIPE, EXPORT_OVERRIDES), str(run_dir / RECIPE))
    if recipe.model.body != "full":  # no transformers class holds the ablated stack
        raise PeftxError(
            f"{run_dir}: model.body: {recipe.model.body} has no plain transformers form; use peftx predict"
        )
    session = open_session(recipe, load_task=False)
    check_same_backbone(record, session.provenance, allow_changed_weights, run_dir)
    load_weights(session.model, run_dir)
    session.model.eval()
    return session


def _move_into_place(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Move a finished export into place. A new target is taken by one rename, which fails where another
    writer put something there meanwhile (so of two racing exports, the second refuses); a previous
    export (with `overwrite`) is renamed aside first and removed only once the new one is in place."""
    if overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
        if not is_export(out_dir):  # something else was written there meanwhile
            raise PeftxError(f"{out_dir}: was written by another process meanwhile; nothing replaced")
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent)) / "export"
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old.parent, ignore_errors=True)
        return
    try:
        os.rename(tmp, out_dir)  # onto nothing or an empty folder; never onto a non-empty one
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise
        raise PeftxError(f"{out_dir}: was written by another process meanwhile; nothing replaced") from None
