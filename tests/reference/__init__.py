"""Float64 LIFT-CAM test reference (captum DeepLift with corrections, plus captum-free sweeps).

Modules:
  torchvision_shim -- ``import_torchvision()`` that works with a CUDA torchvision on CPU torch.
  models           -- ``make_model``, ``load_real_mobilenet_v2``, ``split_model``.
  liftcam          -- ``liftcam_reference`` (captum path) and ``liftcam_reference_autograd``
                      (captum-free custom-Function path), plus the numpy hand sweeps' building blocks.
"""
