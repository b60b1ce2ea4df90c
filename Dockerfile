# vtok on GPU nodes. Build and run where a Docker engine exists (none runs on the project's CI machines):
#   docker build -t vtok .
#   docker run --gpus all --ipc=host -v /data:/data -v $PWD/outputs:/workspace/vtok/outputs vtok \
#       experiment=quickstart trainer.accelerator=gpu trainer.precision=bf16-mixed
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    HF_HOME=/workspace/cache/huggingface \
    TORCH_HOME=/workspace/cache/torch

WORKDIR /workspace/vtok
COPY pyproject.toml README.md ./
COPY vtok ./vtok
# The base image's CUDA torch satisfies the torch requirement; pip keeps it.
RUN pip install --no-cache-dir -e '.[dev]'
COPY configs ./configs
COPY train.py Makefile ./
COPY tests ./tests

ENTRYPOINT ["python", "train.py"]
