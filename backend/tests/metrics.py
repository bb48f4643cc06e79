"""Reading a Prometheus exposition the way Prometheus does: `prometheus_client.parser`."""

from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

type Samples = Mapping[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample by (sample name, labels); raises if the text is not valid exposition."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when absent (a labelled counter nobody has incremented yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def total(samples: Samples, name: str) -> float:
    """The sum over every label set of one sample name."""
    return sum(found for (sample, _), found in samples.items() if sample == name)
