"""Static, multi-dimensional, dynamic and function partitions."""

from __future__ import annotations

import pickle
from datetime import date

import pytest

import flowstone as fs

TENANTS = fs.StaticPartitions(["acme", "globex"])
REGIONS = fs.StaticPartitions(["eu", "us", "apac"])
DAYS = fs.DailyPartitions(start="2025-01-01", end="2025-01-11")


def tenant_region_date() -> fs.MultiPartitions:
    return fs.MultiPartitions({"tenant": TENANTS, "region": REGIONS, "date": DAYS})


# ---------------------------------------------------------------------- multi
def test_multi_partitions_order_and_codec() -> None:
    parts = tenant_region_date()
    assert parts.count() == 2 * 3 * 10
    keys = list(parts.keys())
    assert keys[:3] == ["acme|eu|2025-01-01", "acme|eu|2025-01-02", "acme|eu|2025-01-03"]
    assert keys[10] == "acme|us|2025-01-01" and keys[30] == "globex|eu|2025-01-01"
    assert parts.index_of("globex|apac|2025-01-10") == 59 == parts.count() - 1
    value = parts.to_value("globex|us|2025-01-05")
    assert value.tenant == "globex" and value["region"] == "us" and value.date == date(2025, 1, 5)
    assert dict(value) == {"tenant": "globex", "region": "us", "date": date(2025, 1, 5)}
    assert value.keys_by_dimension == {"tenant": "globex", "region": "us", "date": "2025-01-05"}
    assert str(value) == "globex|us|2025-01-05"
    assert parts.to_key(value) == "globex|us|2025-01-05"
    assert parts.to_key({"tenant": "acme", "region": "eu", "date": date(2025, 1, 2)}) == "acme|eu|2025-01-02"
    assert parts.split("acme|eu|2025-01-02") == {"tenant": "acme", "region": "eu", "date": "2025-01-02"}
    assert parts.key_of(tenant="acme", region="eu", date="2025-01-02") == "acme|eu|2025-01-02"
    assert list(parts.dimensions) == ["tenant", "region", "date"]
    assert pickle.loads(pickle.dumps(value)) == value
    with pytest.raises(AttributeError):
        value.tenant = "x"
    with pytest.raises(AttributeError, match="no dimension 'country'"):
        _ = value.country


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("acme|eu", "3 dimension"),
        ("acme|eu|2025-01-01|x", "3 dimension"),
        ("acme|mars|2025-01-01", "dimension 'region'"),
        ("acme|eu|2025-01-11", "dimension 'date'.*outside"),
        ("acme|eu|2025-1-1", "dimension 'date'.*not a day key"),
        ("ac\\me|eu|2025-01-01", "3 dimension"),  # an unknown escape has no canonical form
    ],
)
def test_multi_partitions_reject_bad_keys(key: str, message: str) -> None:
    parts = tenant_region_date()
    assert key not in parts
    with pytest.raises(ValueError, match=message):
        parts.index_of(key)
    with pytest.raises(ValueError):
        parts.to_value(key)


def test_multi_partitions_validate_their_inputs() -> None:
    parts = tenant_region_date()
    with pytest.raises(ValueError, match="exactly the dimensions"):
        parts.key_of(tenant="acme", region="eu")
    with pytest.raises(ValueError, match="dimension 'tenant'"):
        parts.key_of(tenant="initech", region="eu", date="2025-01-01")
    with pytest.raises(ValueError, match="mapping of"):
        parts.to_key({"tenant": "acme"})
    with pytest.raises(ValueError, match="'2025-01-02' is not a value of DailyPartitions"):
        parts.to_key({"tenant": "acme", "region": "eu", "date": "2025-01-02"})  # a str is not a date value
    for bad in [{}, {"x": "not a definition"}, {"": TENANTS}, [("a", TENANTS)]]:
        with pytest.raises(ValueError):
            fs.MultiPartitions(bad)  # type: ignore[arg-type]
    assert 1 not in parts and None not in parts


def test_multi_partitions_escape_separators() -> None:
    parts = fs.MultiPartitions(
        {"path": fs.StaticPartitions(["a|b", "c\\", "plain"]), "n": fs.StaticPartitions(["|"])}
    )
    assert list(parts.keys()) == ["a\\|b|\\|", "c\\\\|\\|", "plain|\\|"]
    assert parts.split("c\\\\|\\|") == {"path": "c\\", "n": "|"}
    assert parts.to_value("a\\|b|\\|").path == "a|b"


def test_multi_equality_repr_and_nesting() -> None:
    assert tenant_region_date() == tenant_region_date()
    assert hash(tenant_region_date()) == hash(tenant_region_date())
    assert tenant_region_date() != fs.MultiPartitions({"region": REGIONS, "tenant": TENANTS, "date": DAYS})
    assert (
        repr(fs.MultiPartitions({"t": TENANTS}))
        == "MultiPartitions({'t': StaticPartitions(['acme', 'globex'])})"
    )
    nested = fs.MultiPartitions({"inner": fs.MultiPartitions({"a": TENANTS, "b": REGIONS}), "date": DAYS})
    key = nested.key_at(nested.count() - 1)
    assert key == "globex\\|apac|2025-01-10"
    assert nested.to_value(key).inner.b == "apac"


def test_a_million_multi_keys_without_a_list() -> None:
    thousand = fs.StaticPartitions([f"k{i:03d}" for i in range(1000)])
    parts = fs.MultiPartitions({"a": thousand, "b": thousand})
    assert parts.count() == 1_000_000
    assert parts.key_at(123_456) == "k123|k456" and parts.index_of("k123|k456") == 123_456
    assert "k999|k999" in parts and "k999|k1000" not in parts
    assert parts.page(37) == [f"k003|k{i:03d}" for i in range(700, 800)]
    assert list(parts.keys("k998|k998", "k999|k001")) == ["k998|k998", "k998|k999", "k999|k000", "k999|k001"]
    with pytest.raises(IndexError):
        parts.key_at(1_000_000)
    with pytest.raises(IndexError):
        parts.key_at(-1)


# ---------------------------------------------------------------------- static
def test_static_errors_stay_short_for_long_lists() -> None:
    many = fs.StaticPartitions([f"key-{i}" for i in range(10_000)])
    with pytest.raises(ValueError, match=r"is not one of \['key-0', .*\.\.\. \(10000 keys\)\]"):
        many.to_value("nope")
    assert many.key_at(9_999) == "key-9999" and many.index_of("key-5000") == 5000
    assert "StaticPartitions(['key-0'" in repr(many) and "10000 keys" in repr(many)


# ---------------------------------------------------------------------- dynamic
def test_dynamic_partitions_know_no_keys_until_bound() -> None:
    customers = fs.DynamicPartitions("customers")
    assert customers.count() == 0 and list(customers.keys()) == [] and "acme" not in customers
    assert not customers.bound
    with pytest.raises(ValueError, match="not bound to a store"):
        customers.to_value("acme")
    with pytest.raises(IndexError):
        customers.key_at(0)


def test_binding_reads_the_keys_once_in_insertion_order() -> None:
    calls: list[str] = []

    def read(name: str) -> list[str]:
        calls.append(name)
        return ["zeta", "acme", "2025-01-01"]

    customers = fs.DynamicPartitions("customers")
    bound = customers.bind(read)
    assert calls == []  # lazily, on first use
    assert bound.bound and list(bound.keys()) == ["zeta", "acme", "2025-01-01"]
    assert bound.index_of("acme") == 1 and bound.to_value("2025-01-01") == "2025-01-01"
    assert bound.count() == 3 and "acme" in bound
    assert calls == ["customers"]
    assert bound == customers and hash(bound) == hash(customers)  # the same logical set
    assert bound != fs.DynamicPartitions("suppliers")
    assert repr(bound) == "DynamicPartitions('customers')"
    with pytest.raises(ValueError, match="not a key of DynamicPartitions\\('customers'\\)"):
        bound.to_value("initech")


def test_multi_binds_each_dynamic_dimension() -> None:
    parts = fs.MultiPartitions({"customer": fs.DynamicPartitions("customers"), "date": DAYS})
    assert parts.count() == 0 and parts.bind(lambda name: []) is not parts
    static_only = tenant_region_date()
    assert static_only.bind(lambda name: ["x"]) is static_only
    bound = parts.bind(lambda name: {"customers": ["acme", "globex"]}[name])
    assert bound.count() == 20 and "globex|2025-01-10" in bound


def test_bad_dynamic_keys_fail_on_first_use() -> None:
    with pytest.raises(ValueError, match="unique"):
        fs.DynamicPartitions("c").bind(lambda name: ["a", "a"]).count()
    with pytest.raises(ValueError, match="non-empty"):
        fs.DynamicPartitions("c").bind(lambda name: ["a", ""]).count()
    for bad in ["", " padded ", 3]:
        with pytest.raises(ValueError):
            fs.DynamicPartitions(bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- function
def regions_of(config: dict[str, list[str]]) -> list[str]:
    return [f"{tenant}:{region}" for tenant in config["tenants"] for region in config["regions"]]


def test_function_partitions_compute_keys_once_from_config() -> None:
    calls = []

    def counted(config: dict[str, list[str]]) -> list[str]:
        calls.append(config)
        return regions_of(config)

    config = {"tenants": ["acme", "globex"], "regions": ["eu", "us"]}
    parts = fs.FunctionPartitions(counted, config)
    assert calls == []
    assert list(parts.keys()) == ["acme:eu", "acme:us", "globex:eu", "globex:us"]
    assert parts.count() == 4 and parts.to_value("globex:eu") == "globex:eu" and "acme:us" in parts
    assert len(calls) == 1
    assert fs.FunctionPartitions(regions_of, config) == fs.FunctionPartitions(regions_of, dict(config))
    assert fs.FunctionPartitions(regions_of, config) != fs.FunctionPartitions(
        regions_of, {"tenants": [], "regions": []}
    )
    assert "regions_of" in repr(parts) or "counted" in repr(parts)


def test_function_partitions_validate_keys() -> None:
    for result in [["a", "a"], ["a", 1], [""], "ab"]:
        parts = fs.FunctionPartitions(lambda config, result=result: result)
        with pytest.raises(ValueError):
            parts.count()
    with pytest.raises(ValueError, match="function"):
        fs.FunctionPartitions("not callable")  # type: ignore[arg-type]


def test_every_definition_is_accepted_by_partitioned_by(pipeline: fs.Pipeline) -> None:
    for i, definition in enumerate(
        [
            tenant_region_date(),
            fs.DynamicPartitions("customers"),
            fs.FunctionPartitions(regions_of, {"tenants": ["a"], "regions": ["b"]}),
            fs.HourlyPartitions(start="2025-01-01"),
            fs.TimeWindowPartitions(cron="0 9 * * 1-5", start="2025-01-01"),
        ]
    ):
        asset = pipeline.asset(name=f"a{i}", partitioned_by=definition)(lambda context: None)
        assert asset.partitioned_by is definition


def test_definitions_pickle_and_compare_equal() -> None:
    bound = fs.DynamicPartitions("customers").bind(lambda name: ["acme"])
    assert bound.count() == 1  # keys read: they travel with the pickle, the lambda does not
    for definition in [
        tenant_region_date(),
        fs.HourlyPartitions(start="2025-01-01", timezone="Europe/Oslo"),
        fs.TimeWindowPartitions(cron="0 9 * * 1-5", start="2025-01-01", end="2025-03-01"),
        fs.FunctionPartitions(regions_of, {"tenants": ["a"], "regions": ["b"]}),
        bound,
    ]:
        copy = pickle.loads(pickle.dumps(definition))
        assert copy == definition and list(copy.keys()) == list(definition.keys())
