"""ptransfer's tasks: the paper's 17 datasets and the real offline corpora.

  tasks.task_names()                     every dataset key
  tasks.get_spec(name)                   its TaskSpec (template, label words, metrics, ...)
  tasks.get_task(name, vocab, add_eos=)  the seqio.Task for a backbone's vocabulary
  tasks.get_mixture(type, vocab, add_eos=)
  tasks.compute_metrics(spec, refs, preds)

The spec registry (`tasks.specs`) imports no TensorFlow; `get_task` and
`get_mixture` import seqio on first call. See tasks/README.md for the naming
scheme, data layout and split sizes.
"""

from tasks.metrics import compute_metrics
from tasks.specs import (
    CORPUS_TASKS,
    MASK_SLOT,
    PAPER_TASKS,
    SPECS,
    TYPES,
    TaskSpec,
    get_spec,
    task_names,
    tasks_of_type,
)


def get_task(name, vocabulary, *, add_eos: bool, data_dir=None, cache_dir=None, mlm=None,
             target_delimiter: str = ""):
    """See `tasks.registry.get_task`."""
    # Imported on use: the registry imports TensorFlow, the spec registry does not.
    from tasks import registry

    return registry.get_task(name, vocabulary, add_eos=add_eos, data_dir=data_dir,
                             cache_dir=cache_dir, mlm=mlm, target_delimiter=target_delimiter)


def get_mixture(task_type, vocabulary, *, add_eos: bool, data_dir=None, cache_dir=None,
                paper_only: bool = True):
    """See `tasks.registry.get_mixture`."""
    from tasks import registry

    return registry.get_mixture(task_type, vocabulary, add_eos=add_eos, data_dir=data_dir,
                                cache_dir=cache_dir, paper_only=paper_only)


__all__ = ["CORPUS_TASKS", "MASK_SLOT", "PAPER_TASKS", "SPECS", "TYPES", "TaskSpec",
           "compute_metrics", "get_mixture", "get_spec", "get_task", "task_names",
           "tasks_of_type"]
