"""The tools around the stages: the command line, the pipeline, sweeps, the study, reports and checkpoint export."""
