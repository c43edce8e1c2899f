"""`python -m data_pipelines.synth --out DIR [--seed S] [--size default|tiny]`: build the corpus."""

from data_pipelines.synth.building import main

if __name__ == "__main__":
    main()
