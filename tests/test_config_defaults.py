"""Each default lives once: every component YAML under configs/ lists exactly its dataclass's
options with the same values (so `aligner.X=...` always overrides, and the API and the CLI agree)."""

import dataclasses

import pytest
import yaml

from finealign.config import config_dir
from finealign.registry import config_class, ensure_builtins, registry

FILES = [(kind, path) for kind, group in (("aligners", "aligner"), ("losses", "loss"))
         for path in sorted((config_dir() / group).glob("*.yaml"))]  # fmt: skip


@pytest.mark.parametrize("kind,path", FILES, ids=[p.name for _, p in FILES])
def test_yaml_lists_every_option_with_the_dataclass_default(kind, path):
    ensure_builtins(kind)
    raw = yaml.safe_load(path.read_text())
    cls = config_class(registry(kind).get(raw["name"]))
    fields = {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        for f in dataclasses.fields(cls)
    }
    keys = set(raw) - {"name", "defaults"}
    assert keys == set(fields), (
        f"{path.name}: missing {sorted(set(fields) - keys)}, unknown {sorted(keys - set(fields))}"
    )
    for key in keys:
        value = raw[key]
        if isinstance(value, str) and value.startswith("${"):
            continue  # filled from elsewhere in the config (e.g. dim: ${encoder.embed_dim})
        assert value == fields[key], f"{path.name}: {key} is {value!r} in YAML but {fields[key]!r} in {cls.__name__}"


def _defaults(cls) -> dict:
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            for f in dataclasses.fields(cls)}  # fmt: skip


def test_profile_yaml_is_its_dataclasses_defaults():
    from finealign.profiling.inputs import ProblemShape
    from finealign.profiling.measure import ProfileSettings
    from finealign.profiling.run_config import ProfileRunOptions

    raw = yaml.safe_load((config_dir() / "profile.yaml").read_text())
    expected = {**_defaults(ProfileSettings), **_defaults(ProblemShape), **_defaults(ProfileRunOptions)}
    expected.pop("aligner_options")  # composed in from configs/aligner/*.yaml
    assert raw == expected


def test_cache_yaml_is_its_dataclass_defaults():
    from finealign.cache.settings import CacheBuildSettings

    assert yaml.safe_load((config_dir() / "cache.yaml").read_text()) == _defaults(CacheBuildSettings)
