"""The allow-list of s3:// import prefixes (MIXLAB_S3_IMPORT_PREFIXES): parsing,
per-project templates and matching on whole path segments."""

import uuid

import pytest
from pydantic import ValidationError

from app.services import initial_weights as iw
from app.services import sources
from app.services.errors import FieldError
from app.settings import Settings, split_s3_prefixes
from app.storage import storage_options

ALPHA = sources.ProjectRef(uuid.UUID("00000000-0000-0000-0000-0000000000aa"), "alpha")
BETA = sources.ProjectRef(uuid.UUID("00000000-0000-0000-0000-0000000000bb"), "beta")


def _settings(prefixes: str) -> Settings:
    return Settings(s3_import_prefixes=prefixes, import_roots="")


def test_the_setting_is_split_and_normalised_to_whole_segments() -> None:
    assert split_s3_prefixes("") == []
    assert split_s3_prefixes(" s3://bucket-a/datasets , s3://bucket-b/,,s3://c") == [
        "s3://bucket-a/datasets/", "s3://bucket-b/", "s3://c/"]
    assert split_s3_prefixes("s3://b/{project}/in/,s3://b-{project_id}/") == [
        "s3://b/{project}/in/", "s3://b-{project_id}/"]


@pytest.mark.parametrize("bad", ["bucket-a/datasets", "file:///data", "s3://", "s3:///x",
                                 "s3://b//x", "s3://b/../x", "s3://b/./x", "s3://b/{name}/",
                                 "s3://b/x?versionId=1", "s3://b/x#y"])
def test_a_bad_entry_stops_the_settings_from_loading(bad: str) -> None:
    with pytest.raises(ValidationError, match="s3_import_prefixes"):
        _settings(f"s3://ok/,{bad}")


def test_matching_is_on_whole_path_segments() -> None:
    prefix = "s3://bucket-a/datasets/"
    assert sources.under_prefix("s3://bucket-a/datasets/x.npz", prefix)
    assert sources.under_prefix("s3://bucket-a/datasets/deep/er/x.npz", prefix)
    for uri in ("s3://bucket-a/datasets-evil/x.npz",  # a longer segment, same characters
                "s3://bucket-a/datasets",  # the prefix itself is no object under it
                "s3://bucket-a/data/x.npz",
                "s3://bucket-a/x.npz",
                "s3://bucket-ab/datasets/x.npz",  # another bucket
                "s3://bucket/datasets/x.npz",
                "s3://bucket-a/Datasets/x.npz",  # keys are case-sensitive
                "s3://user@bucket-a/datasets/x.npz",
                "s3://bucket-a/datasets/../secret/x.npz",  # no walking out
                "s3://bucket-a/datasets/./x.npz",
                "s3://bucket-a/datasets//x.npz",
                "s3://bucket-a/datasets/x.npz?versionId=1",
                "s3://bucket-a/datasets/x.npz#frag",
                "s3://bucket-a/datasets\\x.npz"):
        assert not sources.under_prefix(uri, prefix), uri
    whole_bucket = "s3://bucket-b/"
    assert sources.under_prefix("s3://bucket-b/x.npz", whole_bucket)
    assert not sources.under_prefix("s3://bucket-bb/x.npz", whole_bucket)


def test_templates_give_each_project_its_own_prefix() -> None:
    settings = _settings("s3://shared/datasets/,s3://tenants/{project}/,"
                         "s3://ids/{project_id}/in/")
    assert sources.s3_prefixes(settings, ALPHA) == [
        "s3://shared/datasets/", "s3://tenants/alpha/", f"s3://ids/{ALPHA.id}/in/"]
    # with no project, only the deployment-wide prefixes apply
    assert sources.s3_prefixes(settings, None) == ["s3://shared/datasets/"]
    # {project} stands only for a name that is one plain path segment
    for name in ("a/b", "..", ".", "a b", "ä"):
        odd = sources.ProjectRef(ALPHA.id, name)
        assert sources.s3_prefixes(settings, odd) == [
            "s3://shared/datasets/", f"s3://ids/{ALPHA.id}/in/"], name

    def allowed(uri: str, project: sources.ProjectRef) -> bool:
        try:
            sources.resolve(settings, uri, project=project)
        except FieldError:
            return False
        return True

    assert allowed("s3://tenants/alpha/zoo.parquet", ALPHA)
    assert not allowed("s3://tenants/alpha/zoo.parquet", BETA)
    assert allowed("s3://tenants/beta/zoo.parquet", BETA)
    assert not allowed("s3://tenants/alpha-evil/zoo.parquet", ALPHA)
    assert allowed("s3://shared/datasets/zoo.npz", BETA)
    assert allowed(f"s3://ids/{BETA.id}/in/w.npz", BETA)
    assert not allowed(f"s3://ids/{ALPHA.id}/in/w.npz", BETA)


def test_refusals_name_the_field_and_the_allowed_prefixes() -> None:
    with pytest.raises(FieldError) as info:
        sources.resolve(_settings(""), "s3://bucket-a/datasets/zoo.npz", project=ALPHA)
    assert info.value.loc == sources.URI_LOC
    assert "turned off" in info.value.message
    assert "MIXLAB_S3_IMPORT_PREFIXES" in info.value.message

    settings = _settings("s3://bucket-a/datasets,s3://tenants/{project}/")
    with pytest.raises(FieldError) as info:
        sources.resolve(settings, "s3://bucket-a/datasets-evil/zoo.npz", project=BETA)
    assert info.value.loc == sources.URI_LOC
    assert info.value.message == ("s3://bucket-a/datasets-evil/zoo.npz is outside the "
                                  "prefixes s3:// URIs may read (s3://bucket-a/datasets/, "
                                  "s3://tenants/beta/)")  # its own, not alpha's
    with pytest.raises(FieldError) as info:
        sources.resolve(settings, "s3://bucket-a/datasets/../x.npz", project=BETA)
    assert "'..'" in info.value.message
    with pytest.raises(FieldError) as info:
        sources.resolve(settings, "s3://bucket-a/other/w.safetensors", loc=iw.WEIGHTS_LOC,
                        suffixes=iw.SUFFIXES, project=BETA)
    assert info.value.loc == iw.WEIGHTS_LOC and "s3://tenants/beta/" in info.value.message
    ok = sources.resolve(settings, "s3://tenants/beta/w.safetensors", loc=iw.WEIGHTS_LOC,
                         suffixes=iw.SUFFIXES, project=BETA)
    assert (ok.scheme, ok.name, ok.path) == ("s3", "w.safetensors", None)


def test_the_artifact_store_is_never_an_import_source() -> None:
    settings = Settings(s3_import_prefixes="s3://shared/", artifact_url="s3://shared/artifacts")
    with pytest.raises(FieldError) as info:
        sources.resolve(settings, "s3://shared/artifacts/runs/r/x.npz", project=ALPHA)
    assert "artifact store" in info.value.message
    assert sources.resolve(settings, "s3://shared/artifacts-2/x.npz", project=ALPHA)


def test_the_endpoint_setting_reaches_s3_filesystems_only() -> None:
    settings = Settings(s3_endpoint_url="http://127.0.0.1:9000")
    assert storage_options("s3://b/artifacts", settings) == {
        "use_listings_cache": False, "endpoint_url": "http://127.0.0.1:9000"}
    assert storage_options("file:///tmp/artifacts", settings) == {}
    assert storage_options("s3://b/artifacts", Settings()) == {"use_listings_cache": False}
