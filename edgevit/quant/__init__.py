"""int8: the options every int8 target shares and what stays float (:mod:`.config`), calibration
sets (:mod:`.calibration`), post-training quantization (:mod:`.ptq`, one verb over the ONNX
Runtime and NNCF forms) with its accuracy fallback (:mod:`.fallback`), and QAT (:mod:`.qat`)."""
