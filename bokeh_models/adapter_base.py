"""What the UNet and FLUX bokeh adapters share: the bokeh embedding, processors installed on a
diffusers model, parameter freezing, and the config.json + model.safetensors checkpoint format."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from diffusers import ConfigMixin, ModelMixin
from torch import nn

from bokeh_models.attention_processors import PivotIds, pivot_index
from bokeh_models.bokeh_embedding import BokehEmbedding, BokehLevels
from bokeh_models.components import resolve_dtype
from bokeh_models.prepared import prepare
from estimators.model_loading import ModelUnavailableError, load_pretrained

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DEFAULT_AVOID = "an adapter you trained locally (bokeh train)"


def _download(repo_id: str, subfolder: Optional[str] = None) -> Path:
    """The hub snapshot folder holding the adapter's config and safetensors weights."""
    from huggingface_hub import hf_hub_download

    hf_hub_download(repo_id, CONFIG_NAME, subfolder=subfolder)
    return Path(hf_hub_download(repo_id, WEIGHTS_NAME, subfolder=subfolder)).parent


def resolve_checkpoint(dir_or_id: Union[str, Path], avoid: str = DEFAULT_AVOID, subfolder: Optional[str] = None) -> Path:
    """The local folder of an adapter checkpoint: ``dir_or_id`` itself (or its ``subfolder``), or its hub download.

    Raises ModelUnavailableError (one line, naming the id) when the files cannot be had.
    """
    path = Path(dir_or_id).expanduser() / (subfolder or "")
    if path.is_dir():
        missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (path / name).is_file()]
        if missing:
            raise ModelUnavailableError(
                f"adapter folder {path} has no {' or '.join(missing)} "
                f"(an adapter checkpoint is {CONFIG_NAME} + {WEIGHTS_NAME}; only safetensors weights are read)"
            )
        return path
    if path.exists():
        raise ModelUnavailableError(f"adapter checkpoint {path} is a file; pass the folder holding {CONFIG_NAME} and {WEIGHTS_NAME}")
    if path.is_absolute() or str(dir_or_id).startswith((".", "~")):
        raise ModelUnavailableError(f"adapter folder {path} does not exist")
    return load_pretrained(_download, str(dir_or_id), what="Bokeh Diffusion adapter", avoid=avoid, subfolder=subfolder)


def read_config(path: Path, fields: Sequence[str]) -> dict[str, Any]:
    """The adapter config in ``path``; unknown fields are an error, not silently dropped."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"cannot read adapter config {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelUnavailableError(f"adapter config {path} is not a JSON object")
    config = {k: v for k, v in config.items() if not k.startswith("_")}  # diffusers' class / version entries
    unknown = sorted(set(config) - set(fields))
    if unknown:
        raise ModelUnavailableError(f"adapter config {path} has unknown fields {unknown} (known: {list(fields)})")
    return config


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (where a new adapter is created by default)."""
    return next(model.parameters()).device


class BokehAdapter(ModelMixin, ConfigMixin):
    """A bokeh embedding plus one attention processor per attention layer of a diffusers model.

    A diffusers model (``ModelMixin`` + ``ConfigMixin``): ``config`` holds the constructor arguments, ``.to()``,
    ``.dtype``, ``.device`` and ``push_to_hub`` are diffusers', and ``save_pretrained`` / ``from_pretrained`` read and
    write the released layout, ``config.json`` (exactly the constructor fields) + ``model.safetensors`` (fp32), from a
    folder or the Hub. Subclasses build the processors; this class installs them (``model.set_attn_processor``) and
    keeps them as ``adapter_modules`` (index = position in ``model.attn_processors``). The processors are also
    submodules of the model's attention layers: ``model.to(...)`` moves and casts them too but not the embedding,
    so move the adapter with ``adapter.to(...)`` (after any cast of the base, to keep trained weights in fp32).
    """

    config_name = CONFIG_NAME
    config_fields: tuple[str, ...] = ()
    #: The processors and the embedding are small and run inside the base model's layers: never split them.
    _no_split_modules = ["BokehEmbedding"]

    def __init__(self, config: dict[str, Any], device: Optional[torch.device], dtype: Optional[torch.dtype]) -> None:
        super().__init__()
        # The base model comes first and positionally and is no config field, which @register_to_config's
        # positional handling cannot skip: the fields are registered here, as that decorator would.
        self.register_to_config(**config)
        self.embedding_layer = BokehEmbedding(
            config["bokeh_input_dim"], config["bokeh_hidden_dim"], config["bokeh_context_dim"], device=device, dtype=dtype
        )
        self.adapter_modules = nn.ModuleList()
        self._processor_names: list[str] = []

    def to(self, *args: Any, **kwargs: Any) -> "BokehAdapter":
        """``nn.Module.to``: diffusers' override warns about float32-kept modules on every dtype cast even when a
        model keeps none (this adapter's weights train and are saved in fp32 whatever the base's dtype)."""
        return nn.Module.to(self, *args, **kwargs)

    def to_json_string(self) -> str:
        """config.json as released: the constructor fields only (no diffusers class or version entries)."""
        return json.dumps({k: v for k, v in self.config.items() if not k.startswith("_")}, indent=2) + "\n"

    # ------------------------------------------------------------------ processors on the model
    def _attach(self, model: Optional[nn.Module], names: list[str], processors: list[nn.Module]) -> None:
        self.adapter_modules = nn.ModuleList(processors)
        self._processor_names = names
        if model is not None:
            self.install(model)

    def fits(self, model: nn.Module) -> bool:
        """Whether ``model`` has the attention layers this adapter was built for (so it can carry it)."""
        return hasattr(model, "attn_processors") and list(model.attn_processors) == self._processor_names

    def install(self, model: nn.Module) -> None:
        """Put this adapter's processors on ``model`` (same architecture as the one it was built for)."""
        names = list(model.attn_processors)
        if not self.fits(model):
            raise ValueError(
                f"this adapter was built for a model with {len(self._processor_names)} attention layers "
                f"({self._processor_names[:1]}...), not this one ({len(names)})"
            )
        model.set_attn_processor(dict(zip(names, self.adapter_modules)))

    def uninstall(self, model: nn.Module) -> None:
        """Give ``model`` back the library's default attention processors (the plain base model)."""
        model.set_attn_processor({name: self.default_processor() for name in model.attn_processors})

    def default_processor(self) -> Any:
        """The diffusers processor ``uninstall`` restores."""
        raise NotImplementedError

    def check_installed(self, model: nn.Module) -> None:
        """Raise a clear error when ``model`` does not run this adapter's processors."""
        first = self._processor_names[0].removesuffix(".processor")
        if model.get_submodule(first).processor is not self.adapter_modules[0]:
            raise ValueError("this adapter is not installed on the model it was called with; call adapter.install(model)")

    def bokeh_tokens(self, bokeh: BokehLevels, batch_size: int) -> torch.Tensor:
        """The ``[batch_size, 1, bokeh_context_dim]`` tokens for levels K (0..30, negative = none)."""
        return self.embedding_layer.tokens(bokeh, batch_size)

    def attention_kwargs(self, bokeh: BokehLevels, pivot_ids: PivotIds = None, batch_size: Optional[int] = None,
                         device: Optional[torch.device] = None) -> dict[str, Any]:
        """The attention keyword arguments of one model call: bokeh tokens, pivot index and what every
        block would otherwise compute for itself (:func:`bokeh_models.prepared.prepare`).

        Also what a stock diffusers pipeline with these processors installed needs on every step, e.g.
        ``FluxPipeline(..., joint_attention_kwargs=adapter.attention_kwargs(12.0))`` (``batch_size``: the rows of
        each model call; default one per K given, a single K broadcasting over any batch)."""
        if batch_size is None:
            batch_size = torch.as_tensor(bokeh).numel()
        tokens = self.bokeh_tokens(bokeh, batch_size)
        # Processors elsewhere than the tokens (a model offloaded until its forward moves it, processors included)
        # compute their own values in their forward pass instead.
        weights = next((p for m in self.adapter_modules for p in m.parameters()), None)
        here = weights is None or weights.device == tokens.device
        return dict(bokeh_embeds=tokens, pivot_index=pivot_index(pivot_ids, batch_size, device or tokens.device),
                    prepared=prepare(self.adapter_modules, tokens) if here else None)

    # ------------------------------------------------------------------ scales and training
    def _set_processor_attr(self, attr: str, value: float) -> None:
        for module in self.adapter_modules:
            if hasattr(module, attr):
                setattr(module, attr, float(value))

    def set_bokeh_scale(self, scale: float) -> None:
        """Weight of the bokeh branch in every adapted layer (0 switches the bokeh control off)."""
        self._set_processor_attr("bokeh_scale", scale)

    def set_lora_scale(self, scale: float) -> None:
        """Weight of the low-rank q / k adapters (0 gives the base model's q and k)."""
        self._set_processor_attr("lora_scale", scale)

    def inert_parameters(self) -> list[nn.Parameter]:
        """The bokeh keys K_b: the embedding makes one bokeh token, whose attention weight is exactly 1
        whatever K_b is, so K_b's gradient is 0. They stay in the checkpoint (the released layout)."""
        return [p for m in self.adapter_modules if hasattr(m, "to_k_bokeh") for p in m.to_k_bokeh.parameters()]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The adapter's own parameters that learn (embedding MLP and processors, less the inert K_b:
        frozen, they cost no backward pass and no weight decay)."""
        inert = {id(p) for p in self.inert_parameters()}
        return [p for p in self.parameters() if id(p) not in inert]

    def set_trainable(self, model: nn.Module, train_base: bool = False) -> list[nn.Parameter]:
        """Freeze ``model`` (or, with ``train_base``, let it train too) and unfreeze the adapter.

        Returns the parameters to optimise: the adapter's, plus the base model's when ``train_base``.
        """
        model.requires_grad_(train_base)
        self.requires_grad_(True)
        for param in self.inert_parameters():
            param.requires_grad_(False)
        params = self.trainable_parameters()
        if train_base:
            own = {id(p) for p in self.parameters()}
            params += [p for p in model.parameters() if id(p) not in own]
        return params

    # ------------------------------------------------------------------ checkpoint files
    def save_pretrained(self, save_directory: Union[str, Path], is_main_process: bool = True,
                        push_to_hub: bool = False, **kwargs: Any) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (fp32) to ``save_directory``; returns it. With
        ``push_to_hub`` the folder is also uploaded (``repo_id`` and the other ``push_to_hub`` arguments in kwargs)."""
        from safetensors.torch import save_file

        if kwargs.get("variant"):
            raise ValueError("a Bokeh Diffusion adapter has one weights file (model.safetensors): no variants")
        directory = Path(save_directory)
        if is_main_process:
            directory.mkdir(parents=True, exist_ok=True)
            self.save_config(directory)
            tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.state_dict().items()}
            save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        if push_to_hub:
            hub = {k: kwargs[k] for k in ("commit_message", "private", "token", "create_pr") if k in kwargs}
            self.push_to_hub(kwargs.get("repo_id", directory.name), **hub)
        return directory

    def load_weights(self, path: Union[str, Path]) -> None:
        """Load ``model.safetensors`` with strict keys and shapes (one-line error on any mismatch)."""
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
            raise ModelUnavailableError(f"cannot read adapter weights {path}: {str(exc).splitlines()[0]}") from exc
        expected = self.state_dict()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        wrong = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
        if missing or unexpected or wrong:
            raise ModelUnavailableError(
                f"adapter weights {path} do not fit its config and model: {len(missing)} missing {missing[:2]}, "
                f"{len(unexpected)} unexpected {unexpected[:2]}, {len(wrong)} of wrong shape {wrong[:2]}"
            )
        self.load_state_dict(tensors, strict=True)

    @classmethod
    def _load(
        cls,
        dir_or_id: Union[str, Path],
        model: Optional[nn.Module],
        device: Optional[Union[str, torch.device]],
        dtype: Optional[Union[str, torch.dtype]],
        avoid: str,
        loader_kwargs: dict[str, Any],
    ) -> "BokehAdapter":
        """Build the adapter from a checkpoint folder or hub id (installed on ``model`` when given).

        ``loader_kwargs``: what diffusers' pipeline loader passes every component (``torch_dtype``, ``subfolder``
        and memory options); the weights are small and load whole, so only the first two matter here."""
        dtype = resolve_dtype(loader_kwargs.pop("torch_dtype", None) if dtype is None else dtype, torch.float32)
        subfolder = loader_kwargs.pop("subfolder", None)
        directory = resolve_checkpoint(dir_or_id, avoid, subfolder)
        config = read_config(directory / CONFIG_NAME, cls.config_fields)
        try:
            adapter = cls(model, **config, device=None if device is None else torch.device(device), dtype=dtype)
        except ValueError as exc:
            raise ModelUnavailableError(f"adapter {dir_or_id} does not fit this model: {exc}") from exc
        adapter.load_weights(directory / WEIGHTS_NAME)
        return adapter
