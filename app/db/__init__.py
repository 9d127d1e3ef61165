from app.db.base import Base
from app.db.models import Dataset, Experiment, MetricPoint, Run

__all__ = ["Base", "Dataset", "Experiment", "MetricPoint", "Run"]
