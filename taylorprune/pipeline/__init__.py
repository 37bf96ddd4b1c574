"""The phases of ``taylorprune run`` (baseline, prune, finetune, measure and report) and what they
share: options read once from the recipe, the output folder, run checkpoints, the run's record.
:mod:`taylorprune.runner` chains them."""
