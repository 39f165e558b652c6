"""`raycv TASK predict` as a Ray job: `ray job submit --working-dir . -- python jobs/predict.py TASK ...`."""

from _entry import run_verb

if __name__ == "__main__":
    run_verb("predict")
