"""NNI 2.10's per-pruner config schemas, as data, checked before the core parses the values.

NNI validates a ``config_list`` with ``schema``: each entry must fit one of a pruner's forms
(normal, global, exclude, internal). Here a form is a :class:`Form` record; :func:`validate`
finds the form an entry fits, then :func:`purecompress.from_config_list` checks the values.
Every problem raises :class:`SchemaError`: the core's :class:`purecompress.selectors.ConfigError`
(naming the entry index and key) that is also ``schema.SchemaError``, the type NNI scripts catch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import attrs

from purecompress.pruning import PruneConfig, from_config_list
from purecompress.selectors import ConfigError

__all__ = ["EXCLUDE", "GLOBAL", "INTERNAL", "NORMAL", "Form", "SchemaError", "schema_errors", "validate"]

try:  # NNI's config error type: the ``schema`` package NNI depends on (not a purecompress dependency)
    from schema import SchemaError as _NniSchemaError
except ImportError:  # without it no script can catch schema.SchemaError: ConfigError alone is enough
    class _NniSchemaError(Exception):  # type: ignore[no-redef]
        """Stands in for ``schema.SchemaError`` when the ``schema`` package is not installed."""


class SchemaError(ConfigError, _NniSchemaError):
    """A bad config as compat raises it: a :class:`~purecompress.selectors.ConfigError` (a ValueError
    naming the entry index and key) that is also ``schema.SchemaError`` when ``schema`` is installed,
    so NNI scripts that catch ``schema.SchemaError`` keep working.

    >>> err = SchemaError(0, 'sparsity', 'must be in [0, 1), got 1.5')
    >>> isinstance(err, ConfigError), str(err)
    (True, "config_list[0]['sparsity']: must be in [0, 1), got 1.5")
    """

    def __init__(self, index: int | None, key: str | None, reason: str) -> None:
        ConfigError.__init__(self, index, key, reason)
        self.autos, self.errors = [str(self)], [None]  # schema.SchemaError's fields (its ``code``)


@contextlib.contextmanager
def schema_errors() -> Iterator[None]:
    """Re-raise a core :class:`~purecompress.selectors.ConfigError` raised inside as :class:`SchemaError`.

    >>> with schema_errors():
    ...     raise ConfigError(1, 'op_names', 'must be a list of strings')
    Traceback (most recent call last):
    ...
    purecompress.compat.schema.SchemaError: config_list[1]['op_names']: must be a list of strings
    """
    try:
        yield
    except SchemaError:
        raise
    except ConfigError as err:
        raise SchemaError(err.index, err.key, err.reason).with_traceback(err.__traceback__) from None

_SELECT = ("op_types", "op_names", "op_partial_names")


@attrs.frozen
class Form:
    """One accepted shape of a config entry.

    Attributes:
        name: NNI's name for it.
        required: each item is a tuple of alternative keys, one of which must be present.
        optional: keys that may be present.
        caps_as_dict: ``max_sparsity_per_layer`` must be ``{module: float}`` (else a float).
    """

    name: str
    required: tuple[tuple[str, ...], ...]
    optional: tuple[str, ...]
    caps_as_dict: bool = False

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key this form allows."""
        return tuple(k for alts in self.required for k in alts) + self.optional

    def problems(self, entry: Mapping[str, object]) -> list[tuple[str | None, str]]:
        """(key, reason) pairs that keep ``entry`` from fitting this form."""
        out: list[tuple[str | None, str]] = [(k, f"not allowed in a {self.name} config")
                                             for k in entry if k not in self.keys]
        out += [(alts[0], f"{self.name} configs need {' or '.join(map(repr, alts))}")
                for alts in self.required if not any(k in entry for k in alts)]
        cap = entry.get("max_sparsity_per_layer")
        if cap is not None and isinstance(cap, Mapping) != self.caps_as_dict:
            out.append(("max_sparsity_per_layer", f"must be a {'dict' if self.caps_as_dict else 'float'} "
                        f"in a {self.name} config"))
        return out


NORMAL = Form("normal", (("sparsity", "sparsity_per_layer"),), _SELECT)
GLOBAL = Form("global", (("total_sparsity",),), ("max_sparsity_per_layer", *_SELECT))
EXCLUDE = Form("exclude", (("exclude",),), _SELECT)
INTERNAL = Form("internal", (("total_sparsity",),), ("max_sparsity_per_layer", "op_types", "op_names"),
                caps_as_dict=True)


def _check_form(index: int, entry: Mapping[str, object], forms: Sequence[Form]) -> None:
    reports = [form.problems(entry) for form in forms]
    if any(not r for r in reports):
        return
    best = min(reports, key=len)
    key, reason = best[0]
    names = ", ".join(f"{f.name} {list(f.keys)}" for f in forms)
    raise ConfigError(index, key, f"{reason} (accepted forms: {names})")


def validate(
    config_list: object,
    *,
    forms: Sequence[Form] | None = None,
    op_types: Sequence[str] | None = None,
    require_sparsity: bool = True,
) -> tuple[PruneConfig, ...]:
    """Check an NNI ``config_list`` the way NNI's pruner would, then parse it with the core.

    Args:
        config_list: the user's list of dicts.
        forms: the forms this pruner accepts (None: any combination of NNI pruning keys).
        op_types: the op types this pruner supports, in every entry (None: any).
        require_sparsity: every entry (but exclusions) must give a sparsity; NNI's base ``Pruner``
            takes entries without one.

    Raises:
        SchemaError: a ConfigError naming the entry index and key, also ``schema.SchemaError``.

    >>> validate([{'sparsity': 0.5, 'op_types': ['default'], 'exclude': True}], forms=[NORMAL, EXCLUDE])
    Traceback (most recent call last):
    ...
    purecompress.compat.schema.SchemaError: config_list[0]['exclude']: not allowed in a normal config ...
    """
    with schema_errors():
        return _validate(config_list, forms, op_types, require_sparsity)


def _validate(config_list: object, forms: Sequence[Form] | None, op_types: Sequence[str] | None,
              require_sparsity: bool) -> tuple[PruneConfig, ...]:
    if not isinstance(config_list, Sequence) or isinstance(config_list, (str, bytes, Mapping)):
        raise ConfigError(None, None, f"config_list must be a list of dicts, got {type(config_list).__name__}")
    for index, entry in enumerate(config_list):
        if not isinstance(entry, Mapping):
            raise ConfigError(index, None, f"each entry must be a dict, got {type(entry).__name__}")
        if "sparse_pattern" in entry:
            raise ConfigError(index, "sparse_pattern", "N:M sparsity is a purecompress extension that NNI's pruners "
                              "do not take; use pc.prune(params, pc.select(model, pc.from_config_list(...)), ...)")
        if forms is not None:
            _check_form(index, entry, forms)
        if entry.get("exclude") is False and not any(k in entry for k in ("sparsity", "sparsity_per_layer",
                                                                            "total_sparsity")):
            raise ConfigError(index, "exclude", "exclude: False does not exclude in purecompress (NNI excluded on "
                              "the key's mere presence); write exclude: True")
        types = entry.get("op_types")
        if op_types is not None and isinstance(types, Sequence) and not isinstance(types, str):
            bad = [t for t in types if t not in op_types]
            if bad:
                raise ConfigError(index, "op_types", f"{bad} not supported by this pruner; supported: {list(op_types)}")
    return from_config_list(config_list, require_sparsity=require_sparsity)  # type: ignore[arg-type]
