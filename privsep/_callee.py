"""The child side of ``Sandbox.call`` (``python -m privsep._callee``), already confined.

It asks the broker for the function and its arguments (JSON), imports and
calls it, and sends back the value (JSON) or the exception as text. What
the function prints goes to the captured stdout/stderr as usual.
"""

from __future__ import annotations

import importlib
import traceback

from privsep import client, protocol


def main() -> int:
    link = client.default()
    spec = link._call_args()
    try:
        module_name, _, function_name = spec.function.partition(":")
        function = getattr(importlib.import_module(module_name), function_name)
        value = function(*spec.args, **spec.kwargs)
        answer = protocol.CallReturn(id=0, value=value)  # validates: JSON values only
    except BaseException as exc:  # every failure of the function is reported, as text
        failure = protocol.CallFailure(
            type=type(exc).__qualname__[: protocol.MAX_CALL_TYPE],
            message=str(exc)[: protocol.MAX_CALL_MESSAGE],
            traceback=traceback.format_exc()[-protocol.MAX_CALL_TRACEBACK :],
        )
        answer = protocol.CallReturn(id=0, error=failure)
    link._call_return(answer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
