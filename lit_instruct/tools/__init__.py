"""The tools around the stages: the command line and the stage-config loader, the pipeline, sweeps, the study, their
reports and plots, and checkpoint export."""
