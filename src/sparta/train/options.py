"""The option helper under its earlier name: it moved to `sparta.options` (layer 1), where the methods' and
objectives' own options dataclasses can use it too."""

from sparta.options import (
    Kind,
    add_arguments,
    alias_keys,
    cli_fields,
    coerce,
    convert,
    convert_field,
    default_of,
    flag_of,
    kinds,
    option,
    to_argv,
)

__all__ = [
    "Kind",
    "add_arguments",
    "alias_keys",
    "cli_fields",
    "coerce",
    "convert",
    "convert_field",
    "default_of",
    "flag_of",
    "kinds",
    "option",
    "to_argv",
]
