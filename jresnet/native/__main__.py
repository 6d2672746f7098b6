"""``python -m jresnet.native``: build the oneDNN kernels if needed and say whether they load."""

from __future__ import annotations

import sys

from jresnet import native


def main() -> int:
    st = native.status()
    if not st.available:
        print(f"oneDNN kernels: not available: {st.reason}")
        return 1
    print(f"oneDNN kernels: available ({st.onednn_version}), {st.library}")
    for name, impl in native.implementations(128, (32, 32), 16, (32, 32), 16, (3, 3), padding=(1, 1, 1, 1)).items():
        print(f"  a 16-channel 3x3 conv at 32x32, {name}: {impl}")
    plan = native.batch_norm_plan((128, 32, 32, 16), 1e-5, True)
    print(f"  a 16-channel batch norm + ReLU at 32x32, forward / backward: {plan.implementation}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
