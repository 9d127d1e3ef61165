"""Importing the optional model zoos, torchvision and timm (the ``vision`` extra).

PyPI's Linux torchvision wheels are CUDA builds: beside the CPU torch their C++
ops library cannot load (it links libtorch_cuda), and torchvision 0.28's import
then dies registering a fake kernel for ``torchvision::nms`` ("operator
torchvision::nms does not exist"). Its models are plain Python and need none of
those ops, so when that happens we declare the two op schemas it registers
unconditionally and import again; the ops themselves (nms, roi_align…) then
raise torchvision's own "Couldn't load custom C++ ops" error if called. Where
the ops library loads (a CUDA torch, a CPU torchvision build) nothing changes.
"""

import sys
from types import ModuleType

import torch

# kept alive: a Library's definitions are dropped when it is garbage-collected
_OPS_SHIM: list[torch.library.Library] = []
_SHIM_OPS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
             "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


class MissingPackage(ImportError):
    """An optional package a model needs is not installed (or cannot import)."""

    def __init__(self, package: str, reason: str = "is not installed") -> None:
        super().__init__(f"{package} {reason}; install it with pip install 'mixlab[vision]' "
                         f"(scripts/setup.sh does)")
        self.package = package


def _declare_torchvision_ops() -> None:
    if _OPS_SHIM:
        return
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SHIM_OPS:
        lib.define(schema)
    _OPS_SHIM.append(lib)


def _forget(package: str) -> None:
    for key in [k for k in sys.modules if k == package or k.startswith(f"{package}.")]:
        del sys.modules[key]


def import_torchvision() -> ModuleType:
    """``torchvision``, imported on the CPU device (module-level tensors must not
    land on a ``torch.device("meta")`` context of the caller)."""
    with torch.device("cpu"):
        try:
            import torchvision
        except ImportError as exc:
            raise MissingPackage("torchvision") from exc
        except RuntimeError as exc:
            if "torchvision::" not in str(exc):
                raise MissingPackage("torchvision", f"cannot be imported ({exc})") from exc
            _forget("torchvision")
            _declare_torchvision_ops()
            try:
                import torchvision
            except (ImportError, RuntimeError) as again:
                raise MissingPackage("torchvision",
                                     f"cannot be imported ({again})") from again
    return torchvision


def import_timm() -> ModuleType:
    """``timm`` (which imports torchvision, hence that first)."""
    import_torchvision()
    with torch.device("cpu"):
        try:
            import timm
        except ImportError as exc:
            raise MissingPackage("timm") from exc
    return timm


def torchvision_available() -> bool:
    try:
        import_torchvision()
    except MissingPackage:
        return False
    return True


def timm_available() -> bool:
    try:
        import_timm()
    except MissingPackage:
        return False
    return True
