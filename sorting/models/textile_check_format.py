"""The textile check's ONNX file format, shared by its writer (:mod:`sorting.models.textile_check_export`, torch)
and its reader (:mod:`sorting.serving.textile_check`, onnxruntime only): one place to bump the version."""

METADATA_KEY = "textile_check"
# 3: crops of any size (the class list wants 224 px, a fitted head may take fewer); 4: the feature map as well
FORMAT_VERSION = 4
INPUT = "crops"
OUTPUT = "logprobs"  # per crop: the 1,000 ImageNet log-probabilities
FEATURES = "features"  # per crop: the last feature map before pooling (sorting.serving.cloth_carve)
