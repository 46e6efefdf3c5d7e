"""Why a ``.swu`` image or its sw-description was refused: one error class, one code per cause.

``SwuError(ValueError)``, with ``code`` one of:

* container: ``not_cpio``, ``bad_header``, ``bad_name``, ``bad_checksum``, ``too_many_members``,
  ``truncated``, ``trailing_data``, ``no_sw_description``;
* sw-description: ``bad_sw_description``, ``no_version``, ``bad_version``.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

SwuErrorCode: TypeAlias = Literal[
    "not_cpio",
    "bad_header",
    "bad_name",
    "bad_checksum",
    "too_many_members",
    "truncated",
    "trailing_data",
    "no_sw_description",
    "bad_sw_description",
    "no_version",
    "bad_version",
    "bad_signature",
]
"""Machine-readable cause of a :class:`SwuError`."""


class SwuError(ValueError):
    """An image or sw-description that SWUpdate would refuse, or that Gaggle will not store.

    Attributes:
        code: What went wrong, for programs (``"no_version"``, ``"truncated"``, ...).
        message: What went wrong, for people.
    """

    def __init__(self, code: SwuErrorCode, message: str) -> None:
        """Create an error.

        Args:
            code: The machine-readable cause.
            message: A human-readable explanation (offsets, names, line numbers).
        """
        super().__init__(code, message)
        self.code: SwuErrorCode = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
