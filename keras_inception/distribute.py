"""Data-parallel training on the distribution engines Keras already has.

:func:`data_parallel` picks the engine of the running backend and returns a
:class:`DataParallelPlan`; the model is built, compiled and trained inside
``plan.scope()``:

* **JAX**: ``keras.distribution.DataParallel`` over every visible device
  (``keras.distribution.list_devices()``): variables are replicated, each batch
  is split along the mesh's ``batch`` axis, and XLA inserts the gradient
  all-reduce. Several hosts: every process runs the same command with
  ``KERAS_DISTRIBUTION_JOB_ADDRESSES``, ``KERAS_DISTRIBUTION_NUM_PROCESSES`` and
  ``KERAS_DISTRIBUTION_PROCESS_ID`` set; :func:`data_parallel` then calls
  ``keras.distribution.initialize()`` before anything touches a device.
* **TensorFlow**: ``tf.distribute.MirroredStrategy`` over the GPUs (else the
  logical CPUs) of this machine, or ``tf.distribute.MultiWorkerMirroredStrategy``
  when ``TF_CONFIG`` names more than one worker. BatchNormalization layers that
  train are synchronised across replicas for the duration
  (:meth:`DataParallelPlan.synchronized_batchnorm`), so their statistics are those
  of the global batch, as on one device.
* **PyTorch**: Keras 3 has no data-parallel engine for this backend
  (``keras.distribution`` is JAX-only, ``tf.distribute`` is TensorFlow's);
  :func:`data_parallel` raises :class:`DistributionUnsupported` naming the
  alternatives.

The global batch (what ``--batch-size`` means) is split evenly across the
replicas, so a data-parallel run computes the same updates as a single device
on the same global batch (tested within 1e-5 on 4 simulated devices).
:func:`simulate_cpu_devices` splits the CPU into several devices to rehearse a
run (or test it) on a laptop.

Example:
    >>> import keras
    >>> from keras_inception import distribute
    >>> try:
    ...     plan = distribute.data_parallel()
    ... except distribute.DistributionUnsupported:  # PyTorch: no Keras engine
    ...     print(True)
    ... else:
    ...     with plan.scope():
    ...         model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    ...     print(plan.replicated(model))
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import keras
import numpy as np

__all__ = [
    "DataParallelPlan", "DistributionUnsupported", "data_parallel", "scale_learning_rate",
    "simulate_cpu_devices",
]

# The environment variables keras.distribution.initialize() reads.
JAX_MULTI_HOST_ENV = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                      "KERAS_DISTRIBUTION_PROCESS_ID")
LR_SCALING = ("none", "linear", "sqrt")

_TORCH_MESSAGE = (
    "Data-parallel training is not available on the PyTorch backend: Keras {version} "
    "has no distribution engine for it (keras.distribution supports JAX only, "
    "tf.distribute is TensorFlow's). Run the same command with KERAS_BACKEND=jax "
    "(keras.distribution.DataParallel) or KERAS_BACKEND=tensorflow "
    "(tf.distribute.MirroredStrategy); or, staying on PyTorch, train in your own loop "
    "with torch.nn.parallel.DistributedDataParallel (Keras' guide 'Multi-GPU "
    "distributed training with PyTorch'). Without --distribute, this backend trains "
    "on one device.")


class DistributionUnsupported(RuntimeError):
    """The running backend (or its state) cannot train data-parallel.

    Example:
        >>> err = DistributionUnsupported("no engine")
        >>> isinstance(err, RuntimeError)
        True
    """


def _backend() -> str:
    return keras.backend.backend()


def _torch_unsupported() -> DistributionUnsupported:
    return DistributionUnsupported(_TORCH_MESSAGE.format(version=keras.version()))


_CPU_COLLECTIVE_TIMEOUT_FLAG = "--xla_cpu_collective_call_terminate_timeout_seconds"
_CPU_COLLECTIVE_TIMEOUT_S = 600


def _add_xla_flag(flag: str, value) -> None:
    """Appends ``flag=value`` to ``XLA_FLAGS`` unless the user set that flag."""
    flags = os.environ.get("XLA_FLAGS", "")
    if not any(f.split("=", 1)[0] == flag for f in flags.split()):
        os.environ["XLA_FLAGS"] = f"{flags} {flag}={value}".strip()


def simulate_cpu_devices(count: int) -> List[str]:
    """Splits the CPU into ``count`` devices, to rehearse data-parallel runs.

    JAX gets ``count`` CPU devices (``jax_num_cpu_devices``, like
    ``XLA_FLAGS=--xla_force_host_platform_device_count``); TensorFlow gets
    ``count`` logical CPU devices. Either must happen before the backend first
    uses a device: call this at the start of the program (the recipes do it for
    ``--cpu-devices``). The devices share the same cores, so this is for testing
    and rehearsal, not for speed. On JAX it also gives XLA:CPU's collectives 600 s
    instead of 40 before it ends a process whose devices do not all arrive (they
    are threads on shared cores), unless ``XLA_FLAGS`` sets
    ``--xla_cpu_collective_call_terminate_timeout_seconds`` itself.

    Args:
        count: devices wanted, at least 1.

    Returns:
        The device names.

    Raises:
        ValueError: ``count`` is not a positive integer.
        DistributionUnsupported: the backend already initialised its devices
            with another count, or the backend is PyTorch.

    Example:
        >>> import keras
        >>> if keras.backend.backend() != "torch":
        ...     print(len(simulate_cpu_devices(1)) >= 1)
        ... else:
        ...     print(True)
        True
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}.")
    count = int(count)
    backend = _backend()
    if backend == "jax":
        import jax

        # The simulated devices are threads on the same cores: on a busy machine one
        # can reach a collective (the gradients' all-reduce) long after the others,
        # and XLA:CPU ends the process after 40 s of waiting (seen with 4 devices on
        # 2 cores beside another test process). Read when JAX starts its backend.
        _add_xla_flag(_CPU_COLLECTIVE_TIMEOUT_FLAG, _CPU_COLLECTIVE_TIMEOUT_S)
        # Already initialised with this count (XLA_FLAGS, or an earlier call): fine.
        try:
            jax.config.update("jax_num_cpu_devices", count)
        except RuntimeError as err:
            devices = jax.devices("cpu")
            if len(devices) != count:
                raise DistributionUnsupported(
                    f"Cannot make {count} CPU devices: JAX already started with "
                    f"{len(devices)} ({err}). Split the CPU before anything uses JAX: "
                    f"call simulate_cpu_devices() first, or start Python with "
                    f"XLA_FLAGS=--xla_force_host_platform_device_count={count}.") from err
        devices = jax.devices("cpu")
        if len(devices) != count:
            raise DistributionUnsupported(
                f"Asked for {count} CPU devices, JAX has {len(devices)}: XLA_FLAGS "
                f"(--xla_force_host_platform_device_count) says otherwise; unset it or "
                f"make it agree.")
        return [str(d) for d in devices]
    if backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        try:
            tf.config.set_logical_device_configuration(cpu, wanted)
        except RuntimeError as err:
            logical = tf.config.list_logical_devices("CPU")
            if len(logical) != count:
                raise DistributionUnsupported(
                    f"Cannot make {count} CPU devices: TensorFlow already started with "
                    f"{len(logical)} ({err}). Call simulate_cpu_devices() at the start "
                    f"of the program, before any model or tensor is made.") from err
        return [d.name for d in tf.config.list_logical_devices("CPU")]
    raise _torch_unsupported()


def scale_learning_rate(learning_rate: float, batch_size: int, *, rule: str = "none",
                        base_batch_size: int = 16) -> float:
    """The learning rate for ``batch_size``, given one tuned for ``base_batch_size``.

    ``linear``: times ``batch_size / base_batch_size`` (Goyal et al., 2017: the
    rule for SGD with large batches); ``sqrt``: times its square root (often
    better with Adam); ``none``: unchanged.

    Args:
        learning_rate: the rate tuned for ``base_batch_size``.
        batch_size: the global batch (all replicas together).
        rule: ``"none"``, ``"linear"`` or ``"sqrt"``.
        base_batch_size: the batch the rate was tuned for.

    Returns:
        The scaled learning rate.

    Raises:
        ValueError: an unknown rule or a batch size below 1.

    Example:
        >>> scale_learning_rate(1e-3, 64, rule="linear")
        0.004
        >>> scale_learning_rate(1e-3, 64, rule="sqrt")
        0.002
    """
    if rule not in LR_SCALING:
        raise ValueError(f"Unknown learning-rate scaling {rule!r}: use one of "
                         f"{', '.join(LR_SCALING)}.")
    for name, value in (("batch_size", batch_size), ("base_batch_size", base_batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    ratio = batch_size / base_batch_size
    factor = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]
    return float(learning_rate) * factor


@dataclasses.dataclass
class DataParallelPlan:
    """How a run is split across devices, and the engine that does it.

    Made by :func:`data_parallel`; build, compile and train the model inside
    :meth:`scope`.

    Attributes:
        backend: the Keras backend.
        engine: the engine's name, e.g. ``"keras.distribution.DataParallel"``.
        devices: the devices of all processes, one replica each.
        num_processes: processes (hosts) taking part; 1 on one machine.
        process_index: this process's index among them.
        engine_object: the Keras distribution or ``tf.distribute`` strategy.

    Example:
        >>> plan = DataParallelPlan("jax", "keras.distribution.DataParallel",
        ...                         ("cpu:0", "cpu:1"), 1, 0, None)
        >>> plan.num_replicas, plan.per_replica_batch(16)
        (2, 8)
    """

    backend: str
    engine: str
    devices: Tuple[str, ...]
    num_processes: int
    process_index: int
    engine_object: Any = dataclasses.field(repr=False)

    @property
    def num_replicas(self) -> int:
        """Replicas (devices) over all processes."""
        return len(self.devices)

    @property
    def even_batches(self) -> bool:
        """Whether every batch must split evenly across the replicas.

        True with more than one replica, on both engines: on JAX a batch is one
        array sharded along its first axis; Keras 3 on ``tf.distribute`` fails on
        a batch that leaves replicas unequal parts (an ``AddN`` shape error).
        Training batches are whole (:class:`~keras_inception.training.FullBatches`);
        validation batches are padded (:class:`~keras_inception.training.EvenBatches`).
        """
        return self.num_replicas > 1

    @property
    def data_shard(self) -> Tuple[int, int]:
        """``(process index, processes)``: this process's part of every batch.

        On JAX each process feeds its contiguous part of each global batch
        (``jax.make_array_from_process_local_data``); ``tf.distribute`` shards the
        data itself, so on TensorFlow every process feeds whole batches:
        ``(0, 1)``.
        """
        if self.backend == "jax":
            return self.process_index, self.num_processes
        return 0, 1

    def per_replica_batch(self, global_batch: int) -> int:
        """Images each replica gets of a global batch of ``global_batch``.

        Args:
            global_batch: images per step over all replicas.

        Returns:
            ``global_batch // num_replicas``.

        Raises:
            ValueError: ``global_batch`` does not split evenly.

        Example:
            >>> plan = DataParallelPlan("tensorflow", "MirroredStrategy",
            ...                         ("a", "b", "c", "d"), 1, 0, None)
            >>> plan.per_replica_batch(32)
            8
        """
        if global_batch < self.num_replicas or global_batch % self.num_replicas:
            raise ValueError(
                f"The global batch of {global_batch} does not split evenly across "
                f"{self.num_replicas} devices: use a multiple of {self.num_replicas} "
                f"(e.g. --batch-size {self.num_replicas * max(1, global_batch // self.num_replicas)}"
                f" or {self.num_replicas * (global_batch // self.num_replicas + 1)}).")
        return global_batch // self.num_replicas

    def per_process_batch(self, global_batch: int) -> int:
        """Images this process feeds per step (the global batch on one host).

        Args:
            global_batch: images per step over all replicas.

        Returns:
            ``global_batch // num_processes`` (after the per-replica check).

        Example:
            >>> DataParallelPlan("jax", "DataParallel", ("a", "b"), 2, 1,
            ...                  None).per_process_batch(16)
            8
        """
        self.per_replica_batch(global_batch)
        return global_batch // self.num_processes

    def summary(self, global_batch: int) -> str:
        """One paragraph for the start of a run: engine, devices, batch split.

        Args:
            global_batch: images per step over all replicas.

        Returns:
            The text.

        Example:
            >>> plan = DataParallelPlan("jax", "keras.distribution.DataParallel",
            ...                         ("cpu:0", "cpu:1"), 1, 0, None)
            >>> print(plan.summary(16))
            Data parallel: keras.distribution.DataParallel on 2 devices (cpu:0, cpu:1), 1 process; global batch 16 = 8 per device x 2 devices; variables replicated on every device, each batch split along its first axis.
        """
        per = self.per_replica_batch(global_batch)
        shown = ", ".join(self.devices[:8]) + (", ..." if len(self.devices) > 8 else "")
        processes = (f"{self.num_processes} processes (this is process "
                     f"{self.process_index}, feeding {self.per_process_batch(global_batch)} "
                     f"images per step)" if self.num_processes > 1 else "1 process")
        text = (f"Data parallel: {self.engine} on {self.num_replicas} "
                f"device{'s' if self.num_replicas != 1 else ''} ({shown}), {processes}; "
                f"global batch {global_batch} = {per} per device x {self.num_replicas} "
                f"device{'s' if self.num_replicas != 1 else ''}; variables replicated on "
                f"every device, each batch split along its first axis.")
        if self.num_replicas == 1:
            text += (" Only one device is visible, so nothing is split (on a CPU-only "
                     "machine, --cpu-devices N rehearses a split).")
        return text

    @contextlib.contextmanager
    def scope(self) -> Iterator["DataParallelPlan"]:
        """The context to build, compile, train and save the model in.

        Yields:
            The plan itself.

        Example:
            >>> import keras
            >>> if keras.backend.backend() != "torch":
            ...     with data_parallel().scope() as plan:
            ...         print(plan.num_replicas >= 1)
            ... else:
            ...     print(True)
            True
        """
        with self.engine_object.scope():
            yield self

    @contextlib.contextmanager
    def synchronized_batchnorm(self, model) -> Iterator[List[str]]:
        """BatchNormalization over the global batch, for the duration (TensorFlow).

        ``tf.distribute`` computes a BN layer's batch statistics on each replica's
        part of the batch unless the layer is ``synchronized``; this sets
        ``synchronized`` on every BatchNormalization of ``model`` (frozen ones
        run in inference mode and are unaffected) and restores the old values on
        exit, so configs and ``.keras`` files stay as they were. On JAX the batch
        is one sharded array and the statistics are global already; nothing is
        changed there.

        Args:
            model: the model about to be trained.

        Yields:
            The names of the layers switched.

        Example:
            >>> import keras
            >>> plan = DataParallelPlan("jax", "DataParallel", ("a",), 1, 0, None)
            >>> model = keras.Sequential([keras.Input((3,)),
            ...                           keras.layers.BatchNormalization()])
            >>> with plan.synchronized_batchnorm(model) as switched:
            ...     switched
            []
        """
        layers = []
        if self.backend == "tensorflow" and self.num_replicas > 1:
            layers = [layer for layer in model._flatten_layers(include_self=False)
                      if isinstance(layer, keras.layers.BatchNormalization)
                      and not layer.synchronized]
        for layer in layers:
            layer.synchronized = True
        try:
            yield [layer.name for layer in layers]
        finally:
            for layer in layers:
                layer.synchronized = False

    def variable_devices(self, variable) -> Tuple[str, ...]:
        """The devices holding a full copy of ``variable``.

        Args:
            variable: a ``keras.Variable``.

        Returns:
            Device names; all of :attr:`devices` for a replicated variable.

        Example:
            >>> import keras
            >>> if keras.backend.backend() != "torch":
            ...     plan = data_parallel()
            ...     with plan.scope():
            ...         v = keras.Variable(1.0)
            ...     print(plan.variable_devices(v) == plan.devices)
            ... else:
            ...     print(True)
            True
        """
        value = variable.value
        if self.backend == "jax":
            sharding = value.sharding
            if not sharding.is_fully_replicated:
                return ()
            held = {_jax_device_name(d) for d in sharding.device_set}
            return (tuple(d for d in self.devices if d in held)
                    + tuple(sorted(held - set(self.devices))))
        components = getattr(value, "values", None)
        if components is None:  # a plain tf.Variable: one device
            return (_tf_device_name(value.device),)
        return tuple(_tf_device_name(c.device) for c in components)

    def replicated(self, model) -> bool:
        """Whether every variable of ``model`` (and its optimizer) is on every device.

        False for a model built outside :meth:`scope`.

        Args:
            model: a Keras model.

        Returns:
            True when all variables are replicated on :attr:`devices`.

        Example:
            >>> import keras
            >>> plan = DataParallelPlan("jax", "DataParallel", ("cpu:0", "cpu:1"), 1,
            ...                         0, None)
            >>> plan.replicated(keras.Sequential([keras.Input((2,))]))
            True
        """
        variables = list(model.weights)
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and optimizer.built:
            variables += list(optimizer.variables)
        return not self._not_replicated(variables)

    def _not_replicated(self, variables) -> List[str]:
        return [v.path for v in variables
                if set(self.variable_devices(v)) != set(self.devices)]

    def check_model(self, model) -> None:
        """Fails with what to do when ``model`` was not built inside :meth:`scope`.

        Args:
            model: the model about to be trained.

        Raises:
            ValueError: some variable is not replicated on every device.

        Example:
            >>> import keras
            >>> plan = DataParallelPlan("jax", "DataParallel", ("cpu:0",), 1, 0, None)
            >>> plan.check_model(keras.Sequential([keras.Input((2,))]))
        """
        if (self.num_replicas == 1 and self.backend == "jax") or self.num_processes > 1:
            # Several hosts: each sees only its own replicas; not checked here.
            return
        stray = self._not_replicated(model.weights)
        if stray:
            raise ValueError(
                f"{len(stray)} variables of model {model.name!r} are not replicated on "
                f"the {self.num_replicas} devices (first: {stray[0]!r}): the model was "
                f"built outside the data-parallel scope. Build (and load weights into) "
                f"the model inside `with plan.scope():`.")

    def batch_shards(self, batch) -> List[Tuple[str, Tuple[int, ...]]]:
        """How a global batch is split: ``(device, shape)`` of each replica's part.

        The same placement ``model.fit`` uses: on JAX the layout of
        ``distribution.get_data_layout`` (what Keras' trainer applies to each
        batch), on TensorFlow ``strategy.experimental_distribute_dataset``.

        Args:
            batch: a NumPy array, the global batch (first axis: images).

        Returns:
            One ``(device, shape)`` per replica.

        Example:
            >>> import keras, numpy as np
            >>> if keras.backend.backend() != "torch":
            ...     plan = data_parallel()
            ...     print(plan.batch_shards(np.zeros((4, 3)))[0][1])
            ... else:
            ...     print((4, 3))
            (4, 3)
        """
        batch = np.asarray(batch)
        self.per_replica_batch(len(batch))
        if self.backend == "jax":
            import jax

            layout = self.engine_object.get_data_layout(batch.shape).backend_layout
            array = jax.make_array_from_process_local_data(layout, batch)
            return [(_jax_device_name(s.device), tuple(s.data.shape))
                    for s in array.addressable_shards]
        import tensorflow as tf

        dataset = tf.data.Dataset.from_tensors(batch)
        parts = next(iter(self.engine_object.experimental_distribute_dataset(dataset)))
        parts = getattr(parts, "values", (parts,))
        return [(_tf_device_name(p.device), tuple(p.shape)) for p in parts]

    def describe(self) -> Dict[str, Any]:
        """A JSON-ready record of the plan (stored with a run's state).

        Returns:
            ``{"engine", "devices", "num_replicas", "num_processes", "process_index"}``.

        Example:
            >>> DataParallelPlan("jax", "DataParallel", ("cpu:0",), 1, 0,
            ...                  None).describe()["num_replicas"]
            1
        """
        return {"engine": self.engine, "devices": list(self.devices),
                "num_replicas": self.num_replicas, "num_processes": self.num_processes,
                "process_index": self.process_index}


def _jax_device_name(device) -> str:
    # The names keras.distribution.list_devices() gives ("cpu:0", "gpu:3").
    return f"{device.platform}:{device.id}"


def _tf_device_name(device: str) -> str:
    # "/job:localhost/replica:0/task:0/device:CPU:1" -> "CPU:1" (plus the task on
    # several workers), comparable with the names data_parallel() lists.
    parts = dict(p.split(":", 1) for p in device.strip("/").split("/") if ":" in p)
    name = parts.get("device", device)
    task = parts.get("task", "0")
    return name if task == "0" else f"task:{task}/{name}"


def _tf_workers() -> Tuple[int, int]:
    """(workers, this worker's index) from TF_CONFIG; (1, 0) without one."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 1, 0
    try:
        config = json.loads(raw)
        cluster = config.get("cluster", {})
        chiefs = len(cluster.get("chief", []))
        workers = len(cluster.get("worker", [])) + chiefs
        task = config.get("task", {})
        # The chief is task 0; workers count after it.
        index = int(task.get("index", 0)) + (chiefs if task.get("type") == "worker"
                                             else 0)
    except (ValueError, AttributeError, TypeError) as err:
        raise ValueError(f"TF_CONFIG is not valid JSON with 'cluster' and 'task': "
                         f"{err}.") from err
    return max(1, workers), index


def _jax_plan(devices: Optional[Sequence[str]]) -> DataParallelPlan:
    import jax

    if all(os.environ.get(k) for k in JAX_MULTI_HOST_ENV[1:]) and jax.process_count() == 1:
        # Several hosts: connect them before any device is used (Keras reads the
        # KERAS_DISTRIBUTION_* variables).
        keras.distribution.initialize()
    found = keras.distribution.list_devices()
    chosen = list(devices) if devices else found
    missing = [d for d in chosen if d not in found]
    if missing:
        raise ValueError(f"Unknown devices {missing}: this process sees {found}.")
    distribution = keras.distribution.DataParallel(devices=chosen)
    return DataParallelPlan("jax", "keras.distribution.DataParallel", tuple(chosen),
                            jax.process_count(), jax.process_index(), distribution)


def _tf_plan(devices: Optional[Sequence[str]]) -> DataParallelPlan:
    import tensorflow as tf

    workers, index = _tf_workers()
    if workers > 1:
        if devices:
            raise ValueError("devices cannot be chosen with several workers (TF_CONFIG): "
                             "each worker uses its GPUs, else its CPU.")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return DataParallelPlan("tensorflow", "tf.distribute.MultiWorkerMirroredStrategy",
                                tuple(f"replica:{i}" for i in
                                      range(strategy.num_replicas_in_sync)),
                                workers, index, strategy)
    found = [d.name for d in tf.config.list_logical_devices("GPU")] or \
        [d.name for d in tf.config.list_logical_devices("CPU")]
    chosen = list(devices) if devices else found
    strategy = tf.distribute.MirroredStrategy(devices=chosen)
    names = tuple(_tf_device_name(d) for d in strategy.extended.worker_devices)
    return DataParallelPlan("tensorflow", "tf.distribute.MirroredStrategy", names, 1, 0,
                            strategy)


def data_parallel(devices: Optional[Sequence[str]] = None) -> DataParallelPlan:
    """A data-parallel plan over every visible device, on the backend's own engine.

    Args:
        devices: restrict to these devices (names as the engine lists them:
            ``keras.distribution.list_devices()`` on JAX, logical device names on
            TensorFlow); default all GPUs/TPUs, else all CPU devices.

    Returns:
        A :class:`DataParallelPlan`.

    Raises:
        DistributionUnsupported: on the PyTorch backend (the message names the
            alternatives).
        ValueError: unknown devices, or a bad ``TF_CONFIG``.

    Example:
        >>> import keras
        >>> if keras.backend.backend() != "torch":
        ...     plan = data_parallel()
        ...     print(plan.engine.split(".")[0] in ("keras", "tf"))
        ... else:
        ...     print(True)
        True
    """
    backend = _backend()
    if backend == "jax":
        return _jax_plan(devices)
    if backend == "tensorflow":
        return _tf_plan(devices)
    raise _torch_unsupported()
