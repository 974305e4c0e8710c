"""The registry of published weights: where each lives and what it needs.

Each :class:`WeightsEntry` carries its contract: source URL and hash (or the
revision it is pinned to), file format and reference layout, class count (1001 for
TF-Slim, whose class 0 is the background), the preprocessing and input size it was
evaluated with, whether its auxiliary heads are trained, the arguments the model
must be built with to reproduce the upstream arithmetic, the published accuracy and
the licence. ``"imagenet"`` is each family's default tag.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

__all__ = ["WeightsEntry", "check_compatible", "create_or_random", "find_weights_entry",
           "get_weights_entry", "list_weights", "weights_file"]

_KERAS = "https://storage.googleapis.com/tensorflow/keras-applications"
_SLIM = "http://download.tensorflow.org/models"
_TORCHVISION = "https://download.pytorch.org/models"
_HF = "https://huggingface.co"


@dataclasses.dataclass(frozen=True)
class WeightsEntry:
    """One published set of weights for one family.

    Attributes:
        model: registry name of the family.
        tag: the name users pass as ``weights=`` (``"imagenet"`` is the default).
        url: where the file is downloaded from.
        format: ``keras_h5``, ``tf_checkpoint`` (TF-Slim ``.tar.gz``), ``torch``
            (torchvision ``.pth``) or ``safetensors`` (timm).
        layout: the reference layout it converts by (see ``refmaps``).
        md5: the MD5 the download must have; None where upstream publishes none.
        sha256: the SHA-256 the download must have, where known.
        sha256_prefix: a prefix of the SHA-256 (torch hub file names carry one).
            An entry with none of the three hashes and no ``revision`` is unpinned.
        revision: the pinned revision for hub files, where known.
        notop_url: keras.applications' headless file, if any.
        notop_md5: the MD5 of ``notop_url``.
        classes: classes of the published classifier (1001: class 0 background).
        preprocessing: ``inception`` ([-1, 1]), ``torch`` (ImageNet mean/std) or
            ``caffe`` (BGR, mean subtracted).
        input_size: the side of the evaluation input.
        crop_fraction: the evaluation centre crop (resize to
            ``input_size / crop_fraction``, then crop ``input_size``).
        interpolation: the evaluation resize filter.
        aux_trained: whether the auxiliary heads carry trained weights.
        model_kwargs: constructor arguments the upstream arithmetic needs
            (``arithmetic``, ``bn_epsilon``).
        top1: ImageNet-1k validation top-1 accuracy (percent) as its publisher
            reports it; None where we could not read the publisher's figure.
        top5: the top-5 accuracy, likewise.
        licence: the weights' licence.
        source: who published them, for the docs.

    Example:
        >>> import keras_inception
        >>> entry = keras_inception.get_weights_entry("inception_v3", "tf_slim")
        >>> entry.classes, entry.format, entry.aux_trained, entry.pinned
        (1001, 'tf_checkpoint', True, False)
    """

    model: str
    tag: str
    url: str
    format: str
    layout: str
    classes: int = 1000
    md5: Optional[str] = None
    sha256: Optional[str] = None
    sha256_prefix: Optional[str] = None
    revision: Optional[str] = None
    notop_url: Optional[str] = None
    notop_md5: Optional[str] = None
    preprocessing: str = "inception"
    input_size: int = 299
    crop_fraction: float = 0.875
    interpolation: str = "bilinear"
    aux_trained: bool = False
    model_kwargs: Tuple[Tuple[str, object], ...] = ()
    top1: Optional[float] = None
    top5: Optional[float] = None
    licence: str = "Apache-2.0"
    source: str = ""

    @property
    def pinned(self) -> bool:
        """Whether the download is checked against a hash or a pinned revision."""
        return bool(self.md5 or self.sha256 or self.sha256_prefix or self.revision)

    @property
    def filename(self) -> str:
        """The file name at the end of ``url``."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]


_ENTRIES = (
    # --- GoogLeNet -----------------------------------------------------------------
    WeightsEntry("googlenet", "imagenet", f"{_TORCHVISION}/googlenet-1378be20.pth",
                 "torch", "torchvision", sha256_prefix="1378be20", input_size=224,
                 model_kwargs=(("arithmetic", "torch"),), top1=69.778, top5=89.530,
                 licence="BSD-3-Clause", source="torchvision (ported from TF-Slim; "
                 "aux heads untrained)"),
    WeightsEntry("googlenet", "tf_slim", f"{_SLIM}/inception_v1_2016_08_28.tar.gz",
                 "tf_checkpoint", "tf_slim", classes=1001, input_size=224,
                 top1=69.8, top5=89.6, source="TF-Slim"),
    # --- BN-Inception --------------------------------------------------------------
    WeightsEntry("inception_v2", "imagenet", f"{_SLIM}/inception_v2_2016_08_28.tar.gz",
                 "tf_checkpoint", "tf_slim", classes=1001, input_size=224,
                 top1=73.9, top5=91.8, source="TF-Slim"),
    # --- Inception-v3 --------------------------------------------------------------
    WeightsEntry("inception_v3", "imagenet",
                 f"{_KERAS}/inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
                 "keras_h5", "keras_applications", md5="9a0d58056eeedaa3f26cb7ebd46da564",
                 notop_url=f"{_KERAS}/inception_v3/"
                           "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 notop_md5="bcbd6486424b2319ff4ef7d526e38f63", top1=77.9, top5=93.7,
                 source="keras.applications"),
    WeightsEntry("inception_v3", "tf_slim", f"{_SLIM}/inception_v3_2016_08_28.tar.gz",
                 "tf_checkpoint", "tf_slim", classes=1001, aux_trained=True,
                 top1=78.0, top5=93.9, source="TF-Slim"),
    WeightsEntry("inception_v3", "torchvision",
                 f"{_TORCHVISION}/inception_v3_google-0cc3c7bd.pth", "torch",
                 "torchvision", sha256_prefix="0cc3c7bd", aux_trained=True,
                 model_kwargs=(("arithmetic", "torch"),), top1=77.294, top5=93.450,
                 licence="BSD-3-Clause",
                 source="torchvision (ported from TF; its transform_input maps "
                        "ImageNet-normalised input to [-1, 1], the range used here)"),
    WeightsEntry("inception_v3", "timm",
                 f"{_HF}/timm/inception_v3.tf_in1k/resolve/main/model.safetensors",
                 "safetensors", "torchvision", model_kwargs=(("arithmetic", "torch"),),
                 source="timm tf_in1k (ported from TF)"),
    # --- Inception-v4 --------------------------------------------------------------
    WeightsEntry("inception_v4", "imagenet",
                 f"{_HF}/timm/inception_v4.tf_in1k/resolve/main/model.safetensors",
                 "safetensors", "timm", top1=80.14, top5=94.98,
                 source="timm tf_in1k (ported from TF-Slim)"),
    WeightsEntry("inception_v4", "tf_slim", f"{_SLIM}/inception_v4_2016_09_09.tar.gz",
                 "tf_checkpoint", "tf_slim", classes=1001, aux_trained=True,
                 top1=80.2, top5=95.2, source="TF-Slim"),
    # --- Inception-ResNet-v2 -------------------------------------------------------
    WeightsEntry("inception_resnet_v2", "imagenet",
                 f"{_KERAS}/inception_resnet_v2/"
                 "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels.h5",
                 "keras_h5", "keras_applications", md5="e693bd0210a403b3192acc6073ad2e96",
                 notop_url=f"{_KERAS}/inception_resnet_v2/"
                           "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 notop_md5="d19885ff4a710c122648d3b5c3b684e4", top1=80.3, top5=95.3,
                 source="keras.applications"),
    WeightsEntry("inception_resnet_v2", "tf_slim",
                 f"{_SLIM}/inception_resnet_v2_2016_08_30.tar.gz", "tf_checkpoint",
                 "tf_slim", classes=1001, aux_trained=True, top1=80.4, top5=95.3,
                 source="TF-Slim"),
    WeightsEntry("inception_resnet_v2", "timm",
                 f"{_HF}/timm/inception_resnet_v2.tf_in1k/resolve/main/model.safetensors",
                 "safetensors", "timm",
                 source="timm tf_in1k (ported from TF-Slim)"),
    WeightsEntry("inception_resnet_v2", "timm_ens_adv",
                 f"{_HF}/timm/inception_resnet_v2.tf_ens_adv_in1k/resolve/main/"
                 "model.safetensors", "safetensors", "timm",
                 source="timm tf_ens_adv_in1k (ensemble adversarial training)"),
    # --- Xception ------------------------------------------------------------------
    WeightsEntry("xception", "imagenet",
                 f"{_KERAS}/xception/xception_weights_tf_dim_ordering_tf_kernels.h5",
                 "keras_h5", "keras_applications", md5="0a58e3b7378bc2990ea3b43d5981f1f6",
                 notop_url=f"{_KERAS}/xception/"
                           "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 notop_md5="b0042744bf5b25fce3cb969f33bebb97", top1=79.0, top5=94.5,
                 licence="MIT", source="keras.applications"),
    WeightsEntry("xception", "timm",
                 "https://github.com/rwightman/pytorch-image-models/releases/download/"
                 "v0.1-cadene/xception-43020ad28.pth", "torch", "timm",
                 sha256_prefix="43020ad28", crop_fraction=0.8975, interpolation="bicubic",
                 model_kwargs=(("arithmetic", "torch"), ("bn_epsilon", 1e-5)),
                 top1=79.05, top5=94.4, licence="unknown (Cadene's port of the Keras "
                 "weights, MIT)", source="timm legacy_xception (Keras weights ported to "
                 "torch by Cadene)"),
)

WEIGHTS: Dict[str, Dict[str, WeightsEntry]] = {}
for _entry in _ENTRIES:
    WEIGHTS.setdefault(_entry.model, {})[_entry.tag] = _entry


def list_weights(model: Optional[str] = None) -> list:
    """The published weights, as ``[WeightsEntry]``, for one family or all.

    Args:
        model: a registry name or alias; None lists every family's weights.

    Returns:
        A list of :class:`WeightsEntry`, the family's default (``"imagenet"``) first.

    Raises:
        ValueError: ``model`` is not a registered name.

    Example:
        >>> import keras_inception
        >>> [w.tag for w in keras_inception.list_weights("inception_v3")]
        ['imagenet', 'tf_slim', 'torchvision', 'timm']
    """
    from keras_inception.registry import get_model_info

    if model is None:
        return [e for entries in WEIGHTS.values() for e in entries.values()]
    return list(WEIGHTS.get(get_model_info(model).name, {}).values())


def get_weights_entry(model: str, tag: str) -> WeightsEntry:
    """The entry ``tag`` of ``model``; a clear error lists the known tags.

    Args:
        model: a registry name or alias.
        tag: a weights name (``"imagenet"``, ``"tf_slim"``, ...).

    Returns:
        The :class:`WeightsEntry`.

    Raises:
        ValueError: unknown model, or a tag the family does not have (the message
            lists the known ones).

    Example:
        >>> import keras_inception
        >>> entry = keras_inception.get_weights_entry("googlenet", "imagenet")
        >>> entry.input_size, entry.preprocessing
        (224, 'inception')
    """
    from keras_inception.registry import get_model_info

    name = get_model_info(model).name
    entries = WEIGHTS.get(name, {})
    if tag not in entries:
        known = ", ".join(entries) or "none (no public ImageNet weights)"
        raise ValueError(
            f"Unknown weights {tag!r} for {name}. Known: {known}. Or pass None, or "
            f"the path to a weight file (.weights.h5, keras .h5, timm .safetensors, "
            f"torchvision .pth, TF-Slim checkpoint).")
    return entries[tag]


# Bump when a conversion changes its output, so caches are rebuilt.
CONVERTER_VERSION = 1


def check_compatible(entry: WeightsEntry, *, include_top: bool, classes: int,
                     aux_logits: bool) -> None:
    """Raises before any download when the model cannot take ``entry``'s weights.

    Args:
        entry: the weights to load.
        include_top: whether the model has its classifier.
        classes: the model's class count (checked only with ``include_top``).
        aux_logits: whether the model has auxiliary heads (the weights must have
            trained ones).

    Raises:
        ValueError: a class count or an auxiliary head the weights cannot fill;
            the message says which arguments would work.

    Example:
        >>> from keras_inception.pretrained import check_compatible, get_weights_entry
        >>> slim = get_weights_entry("inception_v3", "tf_slim")
        >>> check_compatible(slim, include_top=True, classes=1000, aux_logits=True)
        >>> check_compatible(slim, include_top=True, classes=10,
        ...                  aux_logits=False)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: weights='tf_slim' for inception_v3 have a 1001-class classifier; ...
    """
    if include_top:
        allowed = {1000, 1001} if entry.classes == 1001 else {entry.classes}
        if classes not in allowed:
            kept = (" (1000: TF-Slim's background class is dropped; 1001 keeps it)"
                    if entry.classes == 1001 else "")
            raise ValueError(
                f"weights={entry.tag!r} for {entry.model} have a "
                f"{entry.classes}-class classifier; build with classes="
                f"{' or '.join(map(str, sorted(allowed)))}{kept}, or with "
                f"include_top=False and your own head for {classes} classes.")
    if aux_logits and not entry.aux_trained:
        raise ValueError(
            f"weights={entry.tag!r} for {entry.model} have no trained auxiliary heads; "
            f"use aux_logits=False, or a tag with trained ones: "
            f"{', '.join(e.tag for e in list_weights(entry.model) if e.aux_trained) or 'none'}.")


def weights_file(entry: WeightsEntry, *, include_top: bool = True,
                 classes: int = 1000) -> str:
    """A local weights file for ``entry``: downloaded, verified, converted, cached.

    Keras files are used as published; other formats are converted once into our
    ``.weights.h5``, cached under a key made of the source file's hash (the pinned
    one, else its SHA-256), the class count and ``CONVERTER_VERSION``, so the second
    load needs no network and no conversion.

    Args:
        entry: the weights to fetch.
        include_top: False picks keras.applications' headless file where there is
            one.
        classes: 1001 keeps TF-Slim's background class in the converted file; any
            other count converts to 1000.

    Returns:
        The path of a file :func:`keras_inception.load_weights` reads.

    Raises:
        keras_inception.download.DownloadError: the file is not cached and cannot
            be downloaded (offline, or the server fails); the message says where
            to put it by hand.
        keras_inception.download.ChecksumError: the download has the wrong hash.

    Example:
        >>> import os, tempfile
        >>> from unittest import mock
        >>> from keras_inception.download import DownloadError
        >>> from keras_inception.pretrained import get_weights_entry, weights_file
        >>> entry = get_weights_entry("googlenet", "imagenet")
        >>> with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, {
        ...         "KERAS_INCEPTION_CACHE": tmp, "KERAS_INCEPTION_OFFLINE": "1"}):
        ...     try:
        ...         weights_file(entry)
        ...     except DownloadError as err:
        ...         print(err.url == entry.url)
        True
    """
    from keras_inception import download

    if entry.format == "keras_h5":
        if not include_top and entry.notop_url:
            return download.fetch(entry.notop_url, md5=entry.notop_md5,
                                  subdir=f"downloads/{entry.model}")
        return download.fetch(entry.url, md5=entry.md5, subdir=f"downloads/{entry.model}")
    source = download.fetch(entry.url, md5=entry.md5, sha256=entry.sha256,
                            sha256_prefix=entry.sha256_prefix,
                            filename=f"{entry.model}-{entry.tag}-{entry.filename}",
                            subdir=f"downloads/{entry.model}")
    # fetch() has just verified a pinned hash: key on it rather than hashing the
    # file a second time on every load; only unpinned files are hashed here.
    digest = (entry.sha256 or entry.sha256_prefix or entry.md5
              or download.file_hash(source, "sha256"))[:16]
    classes = classes if classes in (1000, 1001) else 1000
    key = f"{entry.model}-{entry.tag}-{digest}-c{classes}-v{CONVERTER_VERSION}"

    def build(path):
        from keras_inception.convert import convert_file

        convert_file(source, entry.model, path, layout=entry.layout, fmt=entry.format,
                     classes=classes)

    return download.cached_or_build(key, build, subdir="converted",
                                    suffix=".weights.h5")


def find_weights_entry(model: str, weights) -> Optional[WeightsEntry]:
    """The entry ``weights`` names for ``model``, or None.

    None for ``weights=None``, for a path to an existing file, and for a name the
    family has no entry for (the constructor then reports the unknown name, or
    :func:`create_or_random` falls back). Recipes read an entry's input size, crop
    and preprocessing from it before building anything.

    Args:
        model: a registry name or alias.
        weights: what a user passed as ``weights=``: a name, a path or None.

    Returns:
        The :class:`WeightsEntry`, or None.

    Example:
        >>> from keras_inception.pretrained import find_weights_entry
        >>> find_weights_entry("inception_v3", "imagenet").input_size
        299
        >>> find_weights_entry("inception_resnet_v1", "imagenet") is None
        True
    """
    import os

    if weights is None or os.path.exists(os.fspath(weights)):
        return None
    try:
        return get_weights_entry(model, weights)
    except ValueError:
        return None


def _offline_reason(err) -> str:
    from keras_inception.download import ENV_OFFLINE
    import os

    if os.environ.get(ENV_OFFLINE, "").strip() not in ("", "0"):
        return f"{ENV_OFFLINE} is set"
    return str(err).splitlines()[0]


def create_or_random(model: str, weights="imagenet", *, print_fn=print, note: str = "",
                     **kwargs):
    """``create_model(model, weights=weights, **kwargs)``, else random weights, said.

    For recipes that must run end to end on a machine without network: when named
    weights cannot be downloaded, or the family has no weights of that name, one
    line says so (with where to put the file by hand) and the model is built with
    random initialisation; likewise for a family that has no published weights
    (Inception-ResNet-v1). Every other error (an unknown weights name, bad
    arguments, a corrupt file) is raised as usual.

    Args:
        model: a registry name or alias.
        weights: a weights name, a weight file, or None.
        print_fn: where the fallback line goes.
        note: appended to that line (what random weights mean for the caller).
        **kwargs: the constructor's other arguments.

    Returns:
        ``(model, weights_used)``: ``weights_used`` is None when the weights are
        random.

    Example:
        >>> from keras_inception.pretrained import create_or_random
        >>> model, used = create_or_random("inception_resnet_v1", "imagenet",
        ...                                include_top=False, input_shape=(75, 75, 3))
        Weights: inception_resnet_v1 has no published weights; starting from RANDOM initialisation instead.
        >>> used is None
        True
    """
    from keras_inception import download, registry

    name = registry.get_model_info(model).name
    if isinstance(weights, str) and not WEIGHTS.get(name) and not _looks_like_path(weights):
        print_fn(f"Weights: {name} has no published weights; starting from RANDOM "
                 f"initialisation instead.{note and ' ' + note}")
        return registry.create_model(name, weights=None, **kwargs), None
    try:
        return registry.create_model(name, weights=weights, **kwargs), weights
    except download.DownloadError as err:
        print_fn(f"Weights: could not download the {weights!r} weights of {name} "
                 f"({_offline_reason(err)}); starting from RANDOM initialisation "
                 f"instead.{note and ' ' + note} To use them, put {err.url} at "
                 f"{err.path} by hand.")
        return registry.create_model(name, weights=None, **kwargs), None


def _looks_like_path(weights: str) -> bool:
    import os

    return os.path.exists(weights) or os.path.sep in weights or weights.endswith(
        (".h5", ".keras", ".safetensors", ".pth", ".pt", ".ckpt", ".gz", ".index"))
