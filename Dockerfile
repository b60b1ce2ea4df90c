# vtok on GPU nodes. Build and run where a Docker engine exists (none runs on the project's CI machines):
#   docker build -t vtok .
#   docker run --gpus all --ipc=host -v /data:/data -v $PWD/outputs:/workspace/vtok/outputs vtok \
#       experiment=quickstart trainer.accelerator=gpu trainer.precision=bf16-mixed
# torch 2.14.1 / torchvision 0.29.1 from PyPI (their CUDA 13 builds): the versions every test here runs on.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    HF_HOME=/workspace/cache/huggingface \
    TORCH_HOME=/workspace/cache/torch

WORKDIR /workspace/vtok
COPY pyproject.toml README.md ./
COPY vtok ./vtok
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 && pip install --no-cache-dir -e '.[dev]'
COPY configs ./configs
COPY train.py Makefile ./
COPY tests ./tests

ENTRYPOINT ["python", "train.py"]
