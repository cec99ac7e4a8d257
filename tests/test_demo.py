from collab_keras.training import demo


def test_demo_prints_parameters_and_exact_reparametrization(capsys):
    demo.main(["--heads", "2", "--key-dim", "8"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[-2:] == ["16,688", "273,714"]  # MultiHeadAttention
    full_width = next(line for line in lines if line.startswith("Dk=16"))
    assert float(full_width.split()[-2]) < 1e-6  # error of T
    assert float(full_width.split()[-1]) < 1e-5  # output difference
