"""The model registry: one :class:`ModelInfo` per family, looked up by name."""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Tuple

__all__ = ["ModelInfo", "Stage", "constructor_info", "create_model", "get_model_info",
           "list_models", "register"]


@dataclasses.dataclass(frozen=True)
class Stage:
    """A named stage of a network: the layer that ends it and its output stride.

    Attributes:
        name: the stage name (``"stem"``, ``"mixed_6"``, ...).
        layer: the name of the layer whose output ends the stage.
        stride: the stage's output stride (input side / feature-map side).

    Example:
        >>> import keras_inception
        >>> stem = keras_inception.get_model_info("inception_v3").stage("stem")
        >>> stem.stride
        4
    """

    name: str
    layer: str
    stride: int


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the library knows about one family, besides its topology.

    Attributes:
        name: registry name (``"inception_v3"``).
        constructor: the keras.applications-style constructor.
        default_size: canonical input size (224 or 299).
        min_size: smallest input side the network accepts.
        aux_min_size: smallest input side with ``aux_logits=True``.
        aux_heads: names of the auxiliary outputs, ``()`` if the paper has none.
        aux_builder: builds one auxiliary head (see :mod:`keras_inception.layers`).
        aux_taps: ``(head, layer)`` pairs: the layer each auxiliary head reads.
        stages: ordered stages from input to output; one is named ``"stem"``.
        aliases: other registry names.
        keras_applications: name of the keras.applications model with the same
            weight layout and weighted-layer order (legacy ``.h5`` files load by it).
        paper: the reference publication.

    Example:
        >>> import keras_inception
        >>> info = keras_inception.get_model_info("googlenet")
        >>> info.name, info.default_size, info.aux_heads
        ('googlenet', 224, ('aux1', 'aux2'))
    """

    name: str
    constructor: Callable
    default_size: int
    min_size: int
    aux_min_size: int = 0
    aux_heads: Tuple[str, ...] = ()
    aux_builder: Optional[Callable] = None
    aux_taps: Tuple[Tuple[str, str], ...] = ()
    stages: Tuple[Stage, ...] = ()
    aliases: Tuple[str, ...] = ()
    keras_applications: str = ""
    paper: str = ""

    def stage(self, name: str) -> Stage:
        """The stage called ``name``.

        Args:
            name: a stage name.

        Returns:
            The :class:`Stage`.

        Raises:
            ValueError: the family has no such stage (the message lists them).
        """
        for stage in self.stages:
            if stage.name == name:
                return stage
        known = ", ".join(s.name for s in self.stages)
        raise ValueError(f"{self.name} has no stage {name!r}; its stages are: {known}.")

    def feature_layers(self) -> Dict[int, str]:
        """Output stride -> name of the last layer at that stride.

        Returns:
            A dict ``{stride: layer name}``.
        """
        layers = {}
        for stage in self.stages:
            layers[stage.stride] = stage.layer
        return layers


_REGISTRY: Dict[str, ModelInfo] = {}
_ALIASES: Dict[str, str] = {}


def register(info: ModelInfo) -> ModelInfo:
    """Adds a family to the registry (each family module registers its own).

    Args:
        info: the family's :class:`ModelInfo`; its name and aliases become known
            to :func:`get_model_info` and :func:`create_model`.

    Returns:
        ``info``, so a module can write ``INFO = register(ModelInfo(...))``.

    Example:
        >>> import keras_inception
        >>> from keras_inception.registry import register
        >>> info = keras_inception.get_model_info("xception")
        >>> register(info) is info
        True
    """
    _REGISTRY[info.name] = info
    for alias in info.aliases:
        _ALIASES[alias] = info.name
    return info


def constructor_info(constructor) -> ModelInfo:
    """The registry entry built by ``constructor``.

    Args:
        constructor: a family constructor (``keras_inception.InceptionV3``).

    Returns:
        Its :class:`ModelInfo`.

    Raises:
        LookupError: ``constructor`` is not registered.

    Example:
        >>> import keras_inception
        >>> from keras_inception.registry import constructor_info
        >>> constructor_info(keras_inception.InceptionV3).name
        'inception_v3'
    """
    for info in _REGISTRY.values():
        if info.constructor is constructor:
            return info
    raise LookupError(f"{constructor.__name__} is not a registered constructor.")


def _canonical(name: str) -> str:
    key = name.lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ValueError(
            f"Unknown model {name!r}. Known models: {', '.join(list_models())} "
            f"(aliases: {', '.join(sorted(_ALIASES))}).")
    return key


def get_model_info(name: str) -> ModelInfo:
    """Returns the :class:`ModelInfo` of a registered model or alias.

    Args:
        name: a registry name or alias (case and ``-``/``_`` insensitive).

    Returns:
        The family's :class:`ModelInfo`.

    Raises:
        ValueError: an unknown name (the message lists the known ones).

    Example:
        >>> import keras_inception
        >>> keras_inception.get_model_info("inception_v3").default_size
        299
    """
    return _REGISTRY[_canonical(name)]


def list_models() -> list:
    """Names of every registered model family, sorted.

    Returns:
        A sorted list of registry names (aliases excluded).

    Example:
        >>> import keras_inception
        >>> "inception_v4" in keras_inception.list_models()
        True
    """
    return sorted(_REGISTRY)


def create_model(model_name: str, /, **kwargs):
    """Builds a registered model by name with the constructor's keyword arguments.

    Args:
        model_name: a name from :func:`list_models` or an alias (``"inception_v1"``).
        **kwargs: passed to the family's constructor (``include_top``, ``weights``,
            ``name`` (the Keras model name),
            ``input_shape``, ``classes``, ``aux_logits``, ...).

    Returns:
        The ``keras.Model``.

    Raises:
        ValueError: an unknown name, or arguments the constructor rejects.

    Example:
        >>> import keras_inception
        >>> model = keras_inception.create_model(
        ...     "googlenet", input_shape=(64, 64, 3), classes=10)
        >>> model.output_shape
        (None, 10)
    """
    return get_model_info(model_name).constructor(**kwargs)
