"""The built-in docstring-classification task."""

from prunekit.data.tasks import FAMILIES, stdlib_family_task


def test_family_task_is_split_by_module_and_deterministic():
    task = stdlib_family_task()
    assert set(task.train_sources).isdisjoint(task.test_sources)
    assert set(task.train_labels) == set(task.test_labels) == set(range(len(FAMILIES)))
    assert len(task.train_texts) == len(task.train_labels) == len(task.train_sources) > 300
    for path, label in zip(task.test_sources, task.test_labels):
        assert path.split("/")[0] in FAMILIES[task.labels[label]]
    again = stdlib_family_task()
    assert again.test_texts == task.test_texts and again.train_labels == task.train_labels
