"""Keras' own layer checklist, ``keras.src.testing.TestCase.run_layer_test``, on this backend.

It checks the config round trip, ``build``, the symbolic call, an eager call, a compiled training
step (``jit_compile="auto"``: XLA on JAX and TensorFlow, eager on torch) and the
``mixed_float16`` policy (float32 variables, outputs in the compute dtype; Keras skips that part
on torch without CUDA: test_keras_mixed_precision.py covers it there).
"""

from __future__ import annotations

import pytest
from keras.src import testing

from glu_keras import GatedLinearUnit

pytestmark = pytest.mark.keras


class GatedLinearUnitChecklist(testing.TestCase):
    def test_rank2_default(self):
        self.run_layer_test(
            GatedLinearUnit,
            init_kwargs={"units": 4},
            input_shape=(2, 3),
            expected_output_shape=(2, 4),
            expected_num_trainable_weights=2,
            expected_num_non_trainable_weights=0,
            expected_num_seed_generators=0,
            expected_num_losses=0,
            supports_masking=True,
        )

    def test_rank3_swiglu_no_bias_regularized(self):
        self.run_layer_test(
            GatedLinearUnit,
            init_kwargs={
                "units": 5,
                "activation": "silu",
                "use_bias": False,
                "kernel_regularizer": "l2",
                "kernel_initializer": "he_normal",
            },
            input_shape=(2, 3, 6),
            expected_output_shape=(2, 3, 5),
            expected_num_trainable_weights=1,
            expected_num_non_trainable_weights=0,
            expected_num_seed_generators=0,
            expected_num_losses=1,
        )

    def test_rank4_gelu_constrained(self):
        self.run_layer_test(
            GatedLinearUnit,
            init_kwargs={"units": 3, "activation": "gelu", "kernel_constraint": "max_norm"},
            input_shape=(2, 2, 2, 4),
            expected_output_shape=(2, 2, 2, 3),
            expected_num_trainable_weights=2,
            expected_num_non_trainable_weights=0,
        )
