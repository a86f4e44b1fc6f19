"""The reference Keras recipe, re-created for timing on this machine (not part of imgclf).

DL4CV's pre-activation bottleneck ResNet trained with ``ImageDataGenerator`` augmentation, SGD lr 0.1,
momentum 0.9 and time decay lr/epochs, 25 epochs of ``N // 32`` steps, then evaluated on the testing
split — the same work ``imgclf train`` does by default. It needs TensorFlow, which imgclf does not
depend on, so run it from a separate environment::

    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu pillow scipy
    /usr/bin/time -v /tmp/tfenv/bin/python benchmarks/keras_recipe.py DATASET

It prints the test accuracy and the wall time of the training and evaluation.
"""

from __future__ import annotations

import sys
import time

import numpy as np


def build(classes: int, reg: float = 0.0005, eps: float = 2e-5, mom: float = 0.9):  # noqa: ANN201
    """``ResNet.build(64, 64, 3, classes, (2, 2, 3), (32, 64, 128, 256), reg=0.0005)``."""
    from keras import Input, Model, layers, regularizers

    def module(x, k, stride, red):  # noqa: ANN001, ANN202 - residual modules keep their 1e-4 default L2
        l2 = regularizers.l2(1e-4)
        a1 = layers.Activation("relu")(layers.BatchNormalization(epsilon=eps, momentum=mom)(x))
        y = layers.Conv2D(k // 4, 1, use_bias=False, kernel_regularizer=l2)(a1)
        y = layers.Activation("relu")(layers.BatchNormalization(epsilon=eps, momentum=mom)(y))
        y = layers.Conv2D(k // 4, 3, strides=stride, padding="same", use_bias=False, kernel_regularizer=l2)(y)
        y = layers.Activation("relu")(layers.BatchNormalization(epsilon=eps, momentum=mom)(y))
        y = layers.Conv2D(k, 1, use_bias=False, kernel_regularizer=l2)(y)
        shortcut = (
            layers.Conv2D(k, 1, strides=stride, use_bias=False, kernel_regularizer=l2)(a1) if red else x
        )
        return layers.add([y, shortcut])

    inputs = Input((64, 64, 3))
    x = layers.BatchNormalization(epsilon=eps, momentum=mom)(inputs)
    x = layers.Conv2D(32, 3, padding="same", use_bias=False, kernel_regularizer=regularizers.l2(reg))(x)
    for i, (count, k) in enumerate(zip((2, 2, 3), (64, 128, 256), strict=True)):
        x = module(x, k, 1 if i == 0 else 2, True)
        for _ in range(count - 1):
            x = module(x, k, 1, False)
    x = layers.Activation("relu")(layers.BatchNormalization(epsilon=eps, momentum=mom)(x))
    x = layers.Flatten()(layers.AveragePooling2D(8)(x))
    x = layers.Dense(classes, kernel_regularizer=regularizers.l2(reg), activation="softmax")(x)
    return Model(inputs, x)


def _forever(iterator):  # noqa: ANN001, ANN202
    while True:
        for i in range(len(iterator)):
            yield iterator[i]
        iterator.on_epoch_end()


def main() -> None:
    start = time.perf_counter()
    import keras
    from keras.optimizers import SGD
    from keras.optimizers.schedules import InverseTimeDecay

    try:
        from keras.preprocessing.image import ImageDataGenerator  # Keras 2
    except ImportError:  # Keras 3 keeps it only as a legacy class
        from keras.src.legacy.preprocessing.image import ImageDataGenerator

    root, epochs, batch = sys.argv[1], 25, 32
    aug = ImageDataGenerator(
        rescale=1 / 255.0,
        rotation_range=20,
        zoom_range=0.05,
        width_shift_range=0.05,
        height_shift_range=0.05,
        shear_range=0.05,
        horizontal_flip=True,
        fill_mode="nearest",
    )
    plain = ImageDataGenerator(rescale=1 / 255.0)
    flow = {"class_mode": "categorical", "target_size": (64, 64), "color_mode": "rgb", "batch_size": batch}
    train = aug.flow_from_directory(f"{root}/training", shuffle=True, **flow)
    val = plain.flow_from_directory(f"{root}/validation", shuffle=False, **flow)
    test = plain.flow_from_directory(f"{root}/testing", shuffle=False, **flow)
    model = build(train.num_classes)
    lr = InverseTimeDecay(0.1, decay_steps=1, decay_rate=0.1 / epochs)  # Keras 2's SGD(decay=lr/epochs)
    model.compile(
        loss="categorical_crossentropy", optimizer=SGD(learning_rate=lr, momentum=0.9), metrics=["accuracy"]
    )
    fit_start = time.perf_counter()
    # Keras 2's generators repeated forever; Keras 3 stops a finite one early and silently runs about
    # half the optimizer steps (155 instead of 275), so repeat it by hand to do the recipe's work.
    model.fit(
        _forever(train),
        steps_per_epoch=train.samples // batch,
        validation_data=val,
        validation_steps=-(-val.samples // batch),
        epochs=epochs,
        verbose=2,
    )
    fit_seconds = time.perf_counter() - fit_start
    probs = model.predict(test, steps=-(-test.samples // batch), verbose=0)
    accuracy = float(np.mean(probs.argmax(axis=1) == test.classes))
    steps = model.optimizer.iterations.numpy()
    print(
        f"keras {keras.__version__}: {steps} optimizer steps; fit {fit_seconds:.1f} s "
        f"({steps * batch / fit_seconds:.1f} images/s); test accuracy {accuracy:.4f}; "
        f"whole script {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
