def compute_accuracy(output, target, topk=(1,)):
    """Top-k accuracies in percent: a list of 1-element tensors, one per k.

    output: [B, C] scores (or a tuple whose first item is the scores); target: [B] labels.
    """
    if isinstance(output, (tuple, list)):
        output = output[0]
    maxk = max(topk)
    batch_size = target.size(0)
    _, pred = output.topk(maxk, 1, True, True)
    correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
    res = []
    for k in topk:
        correct_k = correct[:k].reshape(-1).float().sum(0, keepdim=True)
        res.append(correct_k.mul_(100.0 / batch_size))
    return res
